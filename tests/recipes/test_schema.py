"""Recipes are validated before anything runs: every error names the recipe line, the value and the
allowed values."""
from pathlib import Path

import pytest

from nncompress.flows.prune import pruning_settings
from nncompress.recipes import load_recipe, recipe_from_text, run_recipe
from nncompress.recipes.loader import load_yaml_text
from nncompress.recipes.runner import check_layers
from nncompress.validate import UserError
from nncompress.zoo import build_model

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

GOOD = """\
name: t
model: lenet300
dataset: digits
stages:
  - train: {epochs: 1}
  - prune:
      method: magnitude
      sparsity: 0.9
      layer_sparsity: {fc3: 0.5}
      schedule: oneshot
      finetune_epochs: 0
  - evaluate
"""


def error(text: str) -> str:
    with pytest.raises(UserError) as err:
        recipe_from_text(text, "r.yaml")
    return str(err.value)


def test_good_recipe_parses_into_stages_and_methods():
    recipe = recipe_from_text(GOOD, "r.yaml")
    assert [s.kind for s in recipe.stages] == ["train", "prune", "evaluate"]
    (method,) = recipe.methods()
    assert (method.name, method.sparsity, method.layer_sparsity) == ("magnitude", 0.9, {"fc3": 0.5})
    assert recipe.stages[0].epochs == 1 and recipe.stages[1].schedule == "oneshot"


def test_method_name_typo_names_the_line_and_the_allowed_methods():
    msg = error(GOOD.replace("method: magnitude", "method: magnitud"))
    assert msg.startswith("r.yaml line 7 (stages[1].prune.method)")
    assert "Did you mean 'magnitude'?" in msg and "Allowed: " in msg and "random" in msg and "threshold" in msg
    assert "linear" not in msg.split("Allowed: ")[1]  # a quantizer is not a pruning method
    msg = error(GOOD.replace("method: magnitude", "method: kmeans"))
    assert msg == "r.yaml line 7 (stages[1].prune.method): 'kmeans' is a quantize method: put it in a quantize stage"


def test_sparsity_out_of_range_names_the_line_and_the_range():
    msg = error(GOOD.replace("sparsity: 0.9", "sparsity: 1.5"))
    assert msg == "r.yaml line 8 (stages[1].prune.sparsity): sparsity=1.5 is outside the allowed range [0, 1)"
    msg = error(GOOD.replace("{fc3: 0.5}", "{fc3: 2}"))
    assert msg.startswith("r.yaml line 9 (stages[1].prune.layer_sparsity)") and "[0, 1)" in msg


def test_unknown_layer_fails_before_any_training(tmp_path, digits):
    recipe = recipe_from_text(GOOD.replace("{fc3: 0.5}", "{fc9: 0.5}"), "r.yaml")  # a layer the model lacks
    with pytest.raises(UserError) as err:
        run_recipe(recipe, digits, tmp_path, log=lambda _m: None)
    msg = str(err.value)
    assert msg.startswith("r.yaml line 9 (stages[1].prune.layer_sparsity)")
    assert "'fc9'" in msg and "Did you mean 'fc3'?" in msg and "Layers: fc1, fc2, fc3" in msg
    assert not (tmp_path / "checkpoints").exists()  # nothing ran
    exclude = recipe_from_text(GOOD.replace("finetune_epochs: 0", "finetune_epochs: 0\n      targets: {exclude: [fc4]}"))
    with pytest.raises(UserError, match=r"line 12 \(stages\[1\]\.prune\.targets\).*'fc4' is not in the model"):
        check_layers(exclude, build_model("lenet300", (1, 8, 8), 10))
    pattern = recipe_from_text(GOOD.replace("{fc3: 0.5}", "{'re:conv.*': 0.5}"))
    with pytest.raises(UserError, match=r"line 9 .*'re:conv\.\*' matches none of the targeted layers: fc1, fc2, fc3"):
        check_layers(pattern, build_model("lenet300", (1, 8, 8), 10))


def test_pruning_a_quantized_layer_fails_before_any_training_and_a_second_quantizer_names_its_stage(tmp_path, digits):
    quantize = "  - quantize: {method: linear, weight_bits: 8, act_bits: null}\n"
    late = GOOD.replace("  - prune:", quantize + "  - prune:")
    with pytest.raises(UserError, match=r"line 8 \(stages\[2\]\.prune\.method\): layer 'fc1' is quantized by the "
                                         r"quantize stage before it \(r.yaml line 6 \(stages\[1\]\.quantize\)\)"):
        check_layers(recipe_from_text(late, "r.yaml"), build_model("lenet300", (1, 8, 8), 10))
    apart = late.replace("act_bits: null}", "act_bits: null, targets: {include: [fc3]}}").replace(
        "{fc3: 0.5}", "{fc2: 0.5}").replace("schedule: oneshot", "schedule: oneshot\n      targets: {include: [fc1, fc2]}")
    check_layers(recipe_from_text(apart, "r.yaml"), build_model("lenet300", (1, 8, 8), 10))  # other layers: fine
    twice = GOOD.replace("  - evaluate", quantize + quantize + "  - evaluate")
    with pytest.raises(UserError, match=r"r.yaml line 13 \(stages\[3\]\.quantize\): fc1.weight is already quantized "
                                         r"\(FakeQuant.*\); a second LinearQuant would stack two quantizers\. In a recipe"):
        run_recipe(recipe_from_text(twice, "r.yaml"), digits, tmp_path, log=lambda _m: None)


@pytest.mark.parametrize("edit, expected", [
    (("schedule: oneshot", "schedule: agg"), "r.yaml line 10 (stages[1].prune.schedule): Input should be 'oneshot', "
                                             "'iterative' or 'agp', got agg"),
    (("epochs: 1", "epoch: 1"), "r.yaml line 5 (stages[0].train.epoch): unknown option 'epoch'. Did you mean 'epochs'?"),
    (("finetune_epochs: 0", "finetune_epoch: 0"), "r.yaml line 11 (stages[1].prune.finetune_epoch): 'finetune_epoch' is "
                                                  "neither a prune stage option nor a field of method 'magnitude'. "
                                                  "Did you mean 'finetune_epochs'?"),
    (("- evaluate", "- evalute"), "r.yaml line 12 (stages[2].evalute): unknown stage 'evalute'. Did you mean 'evaluate'?"),
    (("dataset: digits", "dataset: mnist10k"), "r.yaml line 3 (dataset): unknown dataset 'mnist10k'."),
    (("model: lenet300", "model: lenet30"), "r.yaml line 2 (model): model 'lenet30' is neither a zoo model"),
    (("sparsity: 0.9", "sparsity: high"), "r.yaml line 8 (stages[1].prune.sparsity): method 'magnitude' field 'sparsity'"
                                          "=high has the wrong type: expected float"),
    (("{epochs: 1}", "{epochs: 0}"), "r.yaml line 5 (stages[0].train.epochs): Input should be greater than or equal to 1, got 0"),
    (("name: t", "name: t\nname: u"), "r.yaml line 2: key 'name' appears twice in the same mapping (first on line 1)"),
    (("stages:", "stages: ["), "r.yaml line 5: not valid YAML"),
    (("dataset: digits", "datasets: digits"), "r.yaml line 3 (datasets): unknown option 'datasets'. Did you mean 'dataset'?"),
])
def test_schema_errors_name_line_value_and_allowed(edit, expected):
    assert error(GOOD.replace(*edit)).startswith(expected)


def test_an_onnx_encode_points_to_the_export_stage():
    msg = error(GOOD.replace("  - evaluate", "  - encode: {format: onnx}\n  - evaluate"))
    assert "stages[2].encode.format" in msg and "export: {format: qdq}" in msg


def test_schedule_needs_a_sparsity_method():
    text = GOOD.replace("      sparsity: 0.9\n      layer_sparsity: {fc3: 0.5}\n", "").replace("magnitude", "threshold\n      quality: 1.0")
    msg = error(text.replace("schedule: oneshot", "schedule: agp"))
    assert msg.startswith("r.yaml line 9 (stages[1].prune.schedule): schedule 'agp' ramps a sparsity target")
    assert "use schedule: oneshot" in msg
    assert recipe_from_text(text).methods()[0].quality == 1.0


def test_quantize_stage_reaches_quant_methods_flat_or_under_fields():
    text = "model: lenet5\nstages:\n  - quantize: {method: linear, weight_bits: 4, act_bits: 8, observer: mse}\n"
    (method,) = recipe_from_text(text).methods()
    assert (method.name, method.weight_bits, method.act_bits, method.observer) == ("linear", 4, 8, "mse")
    nested = "model: lenet5\nstages:\n  - quantize: {method: linear, fields: {weight_bits: 4, act_bits: 8, observer: mse}}\n"
    assert recipe_from_text(nested).methods() == [method]
    msg = error("model: lenet5\nstages:\n  - quantize:\n      method: linear\n      weight_bits: 99\n")
    assert msg.startswith("<recipe> line 5 (stages[0].quantize.weight_bits)") or msg.startswith("r.yaml line 5")


def test_loader_records_lines_of_nested_values():
    marked = load_yaml_text("a:\n  b: [1, 2]\n  c:\n    - d: 3\n", "x.yaml")
    assert marked.lines[("a", "b")] == 2 and marked.lines[("a", "c", 0, "d")] == 4
    assert marked.where(("a", "c", 0, "d", "missing")) == "x.yaml line 4 (a.c[0].d.missing)"


def test_shipped_recipes_are_valid_and_fit_their_models():
    paths = sorted(RECIPES.glob("*.yaml"))
    assert len(paths) >= 6
    for path in paths:
        recipe = load_recipe(path)
        check_layers(recipe, build_model(recipe.header.model, (1, 28, 28), 10))
        assert recipe.header.dataset == "mnist-10k" and recipe.name == path.stem


@pytest.mark.parametrize("name", ["han2015-lenet300", "han2015-lenet5", "deep-compression-lenet300",
                                  "deep-compression-lenet5"])
def test_shipped_pruning_is_the_cli_default(name):
    """The CLI's `prune` defaults (flows.prune.pruning_settings) are the recipes' settings, so the
    plain command reproduces the README row too."""
    recipe = load_recipe(RECIPES / f"{name}.yaml")
    prune = next(s for s in recipe.stages if s.kind == "prune")
    settings = pruning_settings(recipe.header.model)
    assert prune.method_spec() == settings.method
    assert (prune.schedule, prune.rounds, prune.finetune_epochs, prune.lr_factor) == (
        settings.schedule, settings.rounds, settings.finetune_epochs, settings.lr_factor)


def test_readme_recipe_example_is_valid():
    text = (RECIPES.parent / "README.md").read_text()
    section = text[text.index("## Recipes"):]
    example = section[section.index("```yaml") + len("```yaml"):section.index("```\n", section.index("```yaml") + 7)]
    recipe = recipe_from_text(example, "README.md")
    assert [s.kind for s in recipe.stages] == ["train", "prune", "quantize", "encode", "evaluate"]
    assert recipe.stages[-1].control is True
    check_layers(recipe, build_model("lenet300", (1, 28, 28), 10))


def test_a_stage_option_that_is_also_a_method_field_must_be_placed(monkeypatch):
    """A method field named like a stage option (a future method's `lr`, say) is ambiguous beside the
    stage options: the error says to put the method's value under `fields:`."""
    import dataclasses

    from nncompress.quant.kmeans import KMeansQuant
    from nncompress.registry import METHODS

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class WithLr(KMeansQuant):
        lr: float = 0.5

    monkeypatch.setitem(METHODS, "with_lr", WithLr)
    text = "model: lenet300\nstages:\n  - quantize: {method: with_lr, finetune_epochs: 1, lr: 0.01}\n"
    msg = error(text)
    assert msg.startswith("r.yaml line 3 (stages[0].quantize.lr): 'lr' is both a quantize stage option and a field")
    placed = recipe_from_text(text.replace("lr: 0.01}", "lr: 0.01, fields: {lr: 0.2}}"))
    assert placed.methods()[0].lr == 0.2 and placed.stages[0].lr == 0.01
