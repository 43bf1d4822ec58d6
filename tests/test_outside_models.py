"""Models from outside the zoo: a Hugging Face BERT (built from a small config, no download) fed
dict batches with padding, and the zoo's tiny_vit, through the same quantize_ / save / load path."""
import copy

import pytest
import torch

import nncompress as nc
from nncompress.analysis.metrics import sqnr_db
from nncompress.zoo import build_model

transformers = pytest.importorskip("transformers")

W8A8 = nc.LinearQuant(weight_bits=8, act_bits=8)


def small_bert() -> torch.nn.Module:
    """2 layers, hidden 32; initializer_range 0.3 so attention and MLPs matter next to the residual
    (at BERT's 0.02 the Linears barely change the output and any quantizer would look perfect)."""
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                     vocab_size=100, max_position_embeddings=32, initializer_range=0.3)
    return transformers.BertModel(config).eval()


def padded_batch(seed: int, n: int = 8, length: int = 12) -> transformers.BatchEncoding:
    """Token ids with a random length per row (row 0 full); padding is id 0 with attention_mask 0."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, length + 1, (n,), generator=g)
    lengths[0] = length
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    return transformers.BatchEncoding({"input_ids": torch.randint(1, 100, (n, length), generator=g) * mask,
                                       "attention_mask": mask})


def labelled_batches(count: int) -> list[transformers.BatchEncoding]:
    """`count` padded batches of 16 with a label: does token 7 occur in the unpadded part (half the rows
    get it at position 1)?"""
    batches = []
    for seed in range(count):
        batch = padded_batch(seed, n=16)
        batch["input_ids"][::2, 1] = 7
        batch["labels"] = (batch["input_ids"] == 7).any(1).long()
        batches.append(batch)
    return batches


def trained_bert_classifier(hidden: int, layers: int, epochs: int):
    """A `transformers` BERT classifier (seed 0) trained on the first 8 of `labelled_batches(10)`;
    returns (model, its config, the 10 batches: the last 2 are held out)."""
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                                     intermediate_size=2 * hidden, vocab_size=100, max_position_embeddings=32,
                                     num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    batches = labelled_batches(10)
    nc.fit(model, batches[:8], nc.TrainConfig(epochs=epochs, lr=3e-3, optimizer="adam", weight_decay=0.0),
           progress=False, log=lambda m: None)
    return model, config, batches


@pytest.fixture(scope="module")
def bert_w8a8():
    torch.manual_seed(0)
    bert = small_bert()
    test = padded_batch(99)
    with torch.no_grad():
        reference = bert(**test).last_hidden_state
    report: list[dict] = []
    nc.quantize_(bert, W8A8, data=[padded_batch(s) for s in range(4)], report=report)
    return bert, test, reference, report


def test_bert_calibrates_static_w8a8_on_padded_dict_batches(bert_w8a8):
    bert, test, reference, report = bert_w8a8
    assert len(report[0]["layers"]) == 13  # 2 x (q, k, v, attention out, intermediate, output) + pooler
    with torch.no_grad():
        quantized = bert(**test).last_hidden_state
    real = test["attention_mask"].bool()
    cosine = torch.nn.functional.cosine_similarity(reference[real], quantized[real], dim=-1)
    assert cosine.min() > 0.99  # every unpadded token
    assert 25 < sqnr_db(reference[real], quantized[real]) < 60  # quantized (not float), and well


def test_the_attention_mask_still_hides_padding_after_quantization(bert_w8a8):
    bert, test, _, _ = bert_w8a8
    other_padding = dict(test)
    other_padding["input_ids"] = test["input_ids"] + 7 * (1 - test["attention_mask"])  # change only padded ids
    real = test["attention_mask"].bool()
    with torch.no_grad():
        a, b = bert(**test).last_hidden_state, bert(**other_padding).last_hidden_state
    assert torch.allclose(a[real], b[real], atol=1e-5)


@pytest.mark.parametrize("convert", [False, True])
def test_bert_saves_and_loads_into_a_factory_exactly(bert_w8a8, tmp_path, convert):
    bert, test, _, _ = bert_w8a8
    model = bert
    if convert:
        model = nc.convert_(copy.deepcopy(bert))
    path = nc.save_model(model, tmp_path / "bert.safetensors", recipe=[W8A8], example=padded_batch(5, n=2))
    torch.manual_seed(123)  # the factory draws other random weights: every tensor must come from the file
    loaded, meta = nc.load_model(path, small_bert)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(**test).last_hidden_state, bert(**test).last_hidden_state)
    assert meta["recipe"]["converted"] is convert


def test_bert_classifier_fine_tunes_and_evaluates_on_batch_encodings_with_labels():
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                     vocab_size=100, max_position_embeddings=32, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    batches = labelled_batches(8)
    before = nc.evaluate(model, batches)
    history = nc.fit(model, batches, nc.TrainConfig(epochs=15, lr=3e-3, optimizer="adam", weight_decay=0.0),
                     progress=False, log=lambda m: None)
    after = nc.evaluate(model, batches)
    assert history.train_loss[-1] < 0.5 * history.train_loss[0]
    assert after["accuracy"] > 0.9 and after["loss"] < 0.5 * before["loss"]


def test_tiny_vit_goes_through_the_same_path(digits, tmp_path):
    torch.manual_seed(0)
    vit = build_model("tiny_vit", digits.in_shape, 10).eval()
    x = digits.test_x[:64]
    with torch.no_grad():
        reference = vit(x)
    calib = [{"x": digits.train_x[i:i + 64]} for i in range(0, 256, 64)]  # dict batches: vit(x=...)
    nc.quantize_(vit, W8A8, data=calib)
    with torch.no_grad():
        quantized = vit(x)
    assert torch.nn.functional.cosine_similarity(reference.flatten(), quantized.flatten(), dim=0) > 0.99
    path = nc.save_model(nc.convert_(vit), tmp_path / "vit.safetensors", recipe=[W8A8], arch="tiny_vit",
                         in_shape=digits.in_shape, num_classes=10)
    loaded, _ = nc.load_model(path)  # a zoo model: the random probe replays the recipe
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), quantized)


def test_a_model_with_tied_weights_saves_each_tensor_once_and_loads_exactly(tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                     vocab_size=100, max_position_embeddings=32, initializer_range=0.3)
    mlm = transformers.BertForMaskedLM(config).eval()  # decoder.weight is the word-embedding table
    recipe = [nc.LinearQuant(weight_bits=8, act_bits=None)]
    nc.quantize_(mlm, recipe[0])
    path = nc.save_model(mlm, tmp_path / "mlm.safetensors", recipe=recipe)
    loaded, meta = nc.load_model(path, lambda: transformers.BertForMaskedLM(config))
    assert len(meta["tied"]) >= 1  # stored once, restored under every name
    test = padded_batch(3)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(**test).logits, mlm(**test).logits)


def test_bert_runs_per_token_int8_on_the_row_kernel():
    """to_int8_ on a BertModel with per-token dynamic activations: every Linear takes the C row kernel
    (when it built), the pure-torch path gives the same outputs, and both follow the fake-quantized
    model (each layer up to float32 rounding, which can move a downstream code by one step)."""
    from nncompress.runtime import int8_rows
    from nncompress.runtime.int8_torch import Int8DynamicLinear
    torch.manual_seed(0)
    quantized = nc.convert_(nc.quantize_(small_bert(), nc.DynamicQuant(per_token=True)))
    fast = nc.to_int8_(copy.deepcopy(quantized))
    layers = [m for m in fast.modules() if isinstance(m, Int8DynamicLinear)]
    assert len(layers) == 2 * 6 + 1  # Q, K, V, attention output, FFN in / out per layer, and the pooler
    assert all(m.use_native == int8_rows.available() for m in layers)
    slow = nc.to_int8_(copy.deepcopy(quantized))
    for m in slow.modules():
        if isinstance(m, Int8DynamicLinear):
            m.use_native = False
    batch = padded_batch(5)
    with torch.no_grad():
        ours, got, plain = (m(**batch).last_hidden_state for m in (quantized, fast, slow))
    scale = float(ours.abs().max())
    torch.testing.assert_close(got, plain, rtol=0, atol=1e-5 * scale)
    assert float((got - ours).abs().mean()) <= 1e-3 * scale
    assert float(torch.nn.functional.cosine_similarity(got.flatten(), ours.flatten(), dim=0)) >= 0.9999


def test_bert_biases_as_codes_decode_exactly():
    """Biases as 8-bit codes on a BertModel's Linears: stored as chains, decoded bit for bit."""
    from nncompress.encode.container import parse, serialize
    from nncompress.encode.deep_compression import quantize_biases_
    from nncompress.encode.model import decode_model, encode_model
    torch.manual_seed(0)
    bert = small_bert()
    quantize_biases_(bert, 8)
    nnc = parse(serialize(encode_model(bert, {"arch": "hf-bert"})))
    assert sum(name.endswith(".bias") for name in nnc.chains) == 2 * 6 + 1
    back = decode_model(nnc, model=transformers.BertModel(bert.config).eval())
    batch = padded_batch(6)
    with torch.no_grad():
        assert torch.equal(back(**batch).last_hidden_state, bert(**batch).last_hidden_state)


def test_bert_keep_masks_context_coded_decode_exactly_and_smaller():
    """`mask_coding="context"` on a pruned BertModel: rows of very different scale (as trained layers
    have) leave masks with dead and dense rows, which the context codec writes smaller (.nnc 3.2);
    the decoded model equals the pruned one bit for bit."""
    from nncompress.encode.container import Coding, parse, serialize
    from nncompress.encode.model import decode_model, encode_model
    torch.manual_seed(0)
    bert = small_bert()
    with torch.no_grad():
        for m in bert.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(torch.rand(m.weight.shape[0], 1) ** 3)
    nc.apply_(bert, nc.MagnitudePrune(sparsity=0.9, scope="layer"))
    plain = serialize(encode_model(bert, {"arch": "hf-bert"}))
    nnc = parse(serialize(encode_model(bert, {"arch": "hf-bert"}, coding=Coding("context"))))
    coded = [a for stages in nnc.storage.values() for s in stages for a in s.values() if a["codec"]["name"] == "context"]
    assert nnc.version == (3, 2) and len(coded) >= 12 and sum(nnc.sizes.values()) < len(plain) - 300
    back = decode_model(nnc, model=transformers.BertModel(bert.config).eval())
    batch = padded_batch(6)
    with torch.no_grad():
        assert torch.equal(back(**batch).last_hidden_state, bert(**batch).last_hidden_state)


def test_the_allocator_plans_a_bert_classifier_fed_batch_encodings(tmp_path):
    """`nc.plan_allocation` on a `transformers` classifier (dict batches with labels, no zoo Dataset):
    every Linear gets a (density, bits); carrying the plan out (`Allocation.methods()`, float16 biases
    and codebooks as Deep Compression stores them) writes a .nnc 3.3 file (context-coded masks, compact
    header) of exactly the planned bytes, within
    the budget; and with a joint round the plan damages the model no more than the best uniform plan
    (one density and bits for every layer) that fits the same budget (here the additive plan alone
    is far worse: flows/allocate.py step 8)."""
    from nncompress.encode.deep_compression import round_biases_fp16_, round_codebooks_fp16_
    from nncompress.flows.allocate import fixed_bytes
    from nncompress.flows.allocation_table import PlanContext

    model, config, batches = trained_bert_classifier(hidden=64, layers=2, epochs=10)
    model.eval()
    desc = {"arch": "hf-bert-classifier"}
    plan_config = nc.AllocationConfig(target_ratio=4.0, densities=(1.0, 0.5, 0.25, 0.1), bits=(2, 4, 8), joint_rounds=1,
                                      mask_coding="context", header_coding="compact")
    plan = nc.plan_allocation(model, (b for b in batches[8:]), plan_config, model_desc=desc)  # a generator is fine
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(plan.choice) == linears and plan.planned_bytes <= plan.budget

    context = PlanContext(model, batches[8:])
    fixed = fixed_bytes(model, desc, coding=plan_config.coding)
    uniform = [{n: c for n in plan.table for c in plan.table[n] if (c.density, c.bits) == key}
               for key in {(c.density, c.bits) for c in next(iter(plan.table.values()))}]
    fitting = [u for u in uniform if fixed + sum(c.bytes for c in u.values()) <= plan.budget]
    assert fitting and context.joint_loss(plan.choice) <= min(context.joint_loss(u) for u in fitting)

    prune, share = plan.methods()
    nc.apply_(model, prune)
    nc.apply_(model, share)
    round_biases_fp16_(model)
    round_codebooks_fp16_(model)
    path = tmp_path / "bert.nnc"
    assert nc.write_nnc(path, nc.encode_model(model, desc, coding=plan_config.coding)) == plan.planned_bytes
    assert nc.read_nnc(path).version == (3, 3)  # planned and written with context masks and the compact header
    back = nc.decode_model(nc.read_nnc(path), model=transformers.BertForSequenceClassification(config).eval())
    with torch.no_grad():
        assert torch.equal(back(**padded_batch(3)).logits, model(**padded_batch(3)).logits)


def test_miracle_codes_a_bert_classifier_fed_batch_encodings_with_distillation(tmp_path):
    """`nc.compress_miracle` on a `transformers` classifier with your own batches (`nc.BatchData`, dict
    batches with labels) and distillation from the dense model: every Linear is coded, the file is
    within its budget and decodes bit for bit into a fresh model, the coded model still solves the
    task, and the training takes exactly the steps its same-budget control replays."""
    from nncompress.flows.control import StepCounter
    from nncompress.flows.minimal_random_code import miracle_phases

    model, config, batches = trained_bert_classifier(hidden=32, layers=1, epochs=15)
    dense = copy.deepcopy(model).eval()
    data = nc.BatchData(batches[:8], batches[8:])
    miracle = nc.MiracleConfig(block_bits=8, variational_epochs=4, balance_epochs=2, rounds=2,
                               distill=nc.DistillConfig(alpha=0.5))
    budget = 4 * sum(p.numel() for p in model.parameters()) // 2  # the embeddings stay float32
    with StepCounter() as steps:
        decoded, r = nc.compress_miracle(model, "hf-bert-classifier", data, miracle, budget_bytes=budget, seed=0,
                                         out=tmp_path / "bert.nnc")
    linears = {n for n, m in dense.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(r["blocks"]) == linears and r["exact_roundtrip"] and r["file_bytes"] <= budget and r["distill"]
    back = nc.decode_model(nc.read_nnc(tmp_path / "bert.nnc"), model=transformers.BertForSequenceClassification(config))
    with torch.no_grad():
        assert torch.equal(back.eval()(**padded_batch(3)).logits, decoded(**padded_batch(3)).logits)
    assert r["accuracy"] >= 0.9 and nc.evaluate(dense, batches[8:])["accuracy"] >= 0.9
    _, info = nc.same_budget_control(dense, data, miracle_phases(miracle, 0), distill=miracle.distill)
    assert info["steps"] == steps.steps == 6 * 8 + 1 * 8


def test_miracle_refuses_a_zoo_name_for_your_own_batches():
    batch = (torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))
    with pytest.raises(nc.UserError, match="zoo name, but the data are your own batches"):
        nc.compress_miracle(build_model("lenet5", (1, 28, 28), 10), "lenet5", nc.BatchData([batch], [batch]),
                            nc.MiracleConfig(), budget_bytes=10_000)


def test_soft_weight_sharing_on_a_bert_classifier_fed_batch_encodings(tmp_path):
    """Soft weight-sharing on every Linear of a `transformers` classifier (dict batches with labels):
    training under the prior, the snap to [mask, codebook] (at most 8 shared values per layer, the
    feed-forward layers mostly pruned), codebook fine-tuning that keeps that structure and solves the
    task again; save_model with the methods finish returned and a .nnc file both rebuild it bit for
    bit in a fresh model."""
    model, config, batches = trained_bert_classifier(hidden=32, layers=1, epochs=15)
    method = nc.SoftWeightSharing(components=9, tau=0.01, dataset_size=8 * 16,
                                  targets=nc.Select(types=("Linear",)))
    nc.apply_(model, method)
    nc.fit(model, batches[:8], nc.TrainConfig(epochs=10, lr=1e-3, optimizer="adam", weight_decay=0.0),
           regularizers=method.regularizers(model), progress=False, log=lambda m: None)
    rebuild, figures = method.finish(model.eval())
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(figures["snapped"]) == linears
    assert figures["snapped"]["bert.encoder.layer.0.intermediate.dense"]["kept"] < 0.5
    nc.fit(model, batches[:8], nc.TrainConfig(epochs=5, lr=1e-3, weight_decay=0.0), progress=False,
           log=lambda m: None)  # the shared values (codebooks) and biases
    for name in linears:
        weight = model.get_submodule(name).weight.detach()
        assert len(torch.unique(weight[weight != 0])) <= 8
        assert int((weight != 0).sum()) == round(figures["snapped"][name]["kept"] * weight.numel())
    assert nc.evaluate(model, batches[8:])["accuracy"] >= 0.9
    fresh = lambda: transformers.BertForSequenceClassification(config)  # noqa: E731
    nc.save_model(model, tmp_path / "sws.safetensors", recipe=rebuild, example=padded_batch(3))
    loaded, _ = nc.load_model(tmp_path / "sws.safetensors", fresh)
    nc.write_nnc(tmp_path / "sws.nnc", nc.encode_model(model, {"arch": "hf-bert-classifier"}))
    decoded = nc.decode_model(nc.read_nnc(tmp_path / "sws.nnc"), model=fresh())
    with torch.no_grad():
        reference = model.eval()(**padded_batch(3)).logits
        assert torch.equal(loaded.eval()(**padded_batch(3)).logits, reference)
        assert torch.equal(decoded.eval()(**padded_batch(3)).logits, reference)
