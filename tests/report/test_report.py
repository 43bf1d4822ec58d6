"""Reports: report.md + one self-contained report.html, checked as text and in a real headless browser."""
import base64
import json
import math
import re
import shutil

import pytest
import torch

import nncompress as nc
from nncompress.analysis.metrics import count_params
from nncompress.analysis.sensitivity import SensitivityCurves
from nncompress.report import capture_stage, summary_line, write_report
from nncompress.report.stages import StageRecord
from nncompress.report.tables import format_bytes, format_energy
from nncompress.train import evaluate
from nncompress.zoo import build_model


@pytest.fixture(scope="module")
def stages(digits):
    torch.manual_seed(0)
    model = build_model("lenet300", digits.in_shape, digits.num_classes)

    def accuracy(net):
        return evaluate(net, digits.test_loader())["accuracy"]

    records = [capture_stage("dense", model, digits.in_shape, accuracy(model), size_bytes=4 * count_params(model))]
    nc.prune_(model, nc.MagnitudePrune(sparsity=0.8, scope="layer"))
    records.append(capture_stage("pruned", model, digits.in_shape, accuracy(model)))
    nc.quantize_(model, nc.KMeansQuant(bits=4))
    records.append(capture_stage("clustered", model, digits.in_shape, accuracy(model)))
    return records


@pytest.fixture(scope="module")
def report(stages, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    curves = SensitivityCurves((0.5, 0.9), 0.9, {"fc1": [0.9, 0.6], "fc2": [0.88, 0.7]})
    md, html = write_report(out, stages, title="LeNet-300-100 <test>", sensitivity=curves, notes=["a note"])
    return out, md, html


def test_units_and_the_summary_line():
    assert (format_bytes(202_440), format_bytes(7_300), format_bytes(512), format_bytes(1_500_000)) == \
        ("202 KB", "7.3 KB", "512 B", "1.5 MB")
    assert (format_energy(1_234_567), format_energy(950), format_energy(4_370)) == ("1.23 uJ", "950 pJ", "4.37 nJ")
    a = StageRecord("dense", 0.98611, 202_440, [], {})
    b = StageRecord("encoded", 0.99444, 7_300, [], {})
    assert summary_line([a, b]) == "accuracy 0.9861 -> 0.9944, 202 KB -> 7.3 KB (27.7x)"


def test_stages_hold_the_models_figures(stages):
    dense, pruned, clustered = stages
    assert [r["layer"] for r in dense.layers] == ["fc1", "fc2", "fc3"]
    assert [r["params"] for r in dense.layers] == [64 * 300 + 300, 300 * 100 + 100, 100 * 10 + 10]
    assert dense.size_bytes == 4 * (19_500 + 30_100 + 1_010) and dense.size_measured
    # layer-wise 80 %: fc1 keeps 3,840 of 19,200; sparse storage = kept x (32 + 4) bits + 32-bit biases
    assert pruned.layers[0]["nonzero"] == 3_840 and pruned.layers[0]["bytes"] == (3_840 * 36 + 300 * 32) / 8
    assert not pruned.size_measured
    assert pruned.size_bytes == math.ceil(sum(r["nonzero"] * 36 + (r["params"] - r["weights"]) * 32
                                              for r in pruned.layers) / 8)
    # 4-bit shared weights: kept x (4 + 4) bits
    assert clustered.layers[0]["weight_bits"] == 4 and clustered.layers[0]["bytes"] == (3_840 * 8 + 300 * 32) / 8
    assert clustered.layers[0]["bops"] == 19_200 * 4 * 32
    assert dense.energy["effective_macs"] == 50_200 and pruned.energy["effective_macs"] == pytest.approx(
        sum(r["nonzero"] for r in pruned.layers))
    assert set(clustered.weights) == {"fc1", "fc2", "fc3"} and len(clustered.weights["fc1"]) == 3_840
    assert len(set(clustered.weights["fc1"].tolist())) <= 16  # one spike per centroid


def test_markdown_report_has_tables_and_linked_figures(report, stages):
    out, md, _ = report
    text = md.read_text()
    assert text.startswith("# LeNet-300-100 <test>") and summary_line(stages) in text and "- a note" in text
    for stage in stages:
        assert f"## Layers after stage `{stage.name}`" in text
        assert re.search(rf"^\| {stage.name} \| {stage.accuracy:.4f} \|", text, re.M)
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert sorted(links) == ["figures/accuracy_vs_size.png", "figures/energy.png", "figures/sensitivity.png",
                             "figures/weights.png"]
    assert all((out / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for link in links)
    data = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in data["stages"]] == ["dense", "pruned", "clustered"]


def test_html_report_is_self_contained(report):
    out, _, html = report
    text = html.read_text()
    assert "<script" not in text and not re.search(r"""(src|href)=["'](?!data:)""", text)
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', text)
    files = sorted(p.read_bytes() for p in (out / "figures").glob("*.png"))
    assert sorted(base64.b64decode(i) for i in images) == files and len(files) == 4
    assert "LeNet-300-100 &lt;test&gt;" in text  # escaped


def _browser():
    """(chromium binary, chromedriver) when Selenium and a system Chromium are installed, else skip."""
    pytest.importorskip("selenium")
    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("no headless browser: apt-get install chromium chromium-driver")
    return binary, driver


def render(path):
    """Open `path` in headless Chromium: (title, visible text, [(complete, naturalWidth)], severe console logs)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _browser()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(path.resolve().as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.getBoundingClientRect().width])")
        text = driver.execute_script("return document.body.innerText")
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        return driver.title, text, images, errors
    finally:
        driver.quit()


@pytest.mark.slow
def test_html_report_renders_in_a_real_browser(report, stages, tmp_path):
    _browser()
    _, _, html = report
    title, text, images, errors = render(html)
    assert title == "LeNet-300-100 <test>" and summary_line(stages) in text
    assert len(images) == 4 and all(complete and width > 0 and shown > 0 for complete, width, shown in images)
    assert errors == []
    # the checks can fail: a page with a missing image gives width 0 and a console error
    broken = tmp_path / "broken.html"
    broken.write_text('<!DOCTYPE html><html><head><title>x</title><link rel="icon" href="data:,"></head>'
                      '<body><img src="missing.png"></body></html>')
    _, _, images, errors = render(broken)
    assert images[0][1] == 0 and errors
