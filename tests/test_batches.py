"""Batches of any shape reach the model the same way in calibration, evaluate and fit (batches.py)."""
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.analysis.calibrate import capture_outputs, observe_inputs
from nncompress.analysis.observers import MinMaxObserver
from nncompress.batches import BatchData, batch_size, feed, output_tensor, pack_batch, split_batch, target_of, unpack_batch, with_forward
from nncompress.quant.activation import input_quantizer
from nncompress.quant.primitives import IntSpec, choose_qparams
from nncompress.validate import UserError

X1, X2, Y = torch.tensor([[1.0, 2.0]]), torch.tensor([[10.0, 20.0]]), torch.tensor([1])


class TwoInputs(nn.Module):
    """a + 3 b through a Linear, so which argument went where shows in the number."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 1, bias=False)
        nn.init.ones_(self.fc.weight)

    def forward(self, a, b=None):
        return self.fc(a if b is None else a + 3 * b)


@pytest.mark.parametrize("batch,expected,target", [
    (X1, 3.0, None),                               # a tensor: model(x)
    ((X1, Y), 3.0, Y),                             # (x, y)
    ((X1,), 3.0, None),                            # (x,): no target
    ([X1, X2, Y], 93.0, Y),                        # (x1, x2, y): model(x1, x2)
    (((X1, X2), Y), 93.0, Y),                      # ((x1, x2), y): model(x1, x2)
    ({"a": X1, "b": X2, "labels": Y}, 93.0, Y),    # a dict: model(**inputs), labels split off
    ({"a": X1, "label": Y}, 3.0, Y),
    (({"a": X1, "b": X2}, Y), 93.0, Y),            # (inputs dict, y)
])
def test_every_batch_shape_is_fed_by_the_same_rules(batch, expected, target):
    with torch.no_grad():
        assert float(feed(TwoInputs(), batch)) == expected
    got = target_of(batch)
    assert (got is None and target is None) or torch.equal(got, target)
    assert batch_size(batch) == 1


def test_a_batch_encoding_is_fed_as_keywords_and_keeps_its_attention_mask():
    transformers = pytest.importorskip("transformers")
    encoding = transformers.BatchEncoding({"input_ids": torch.tensor([[5, 6, 0]]), "attention_mask": torch.tensor([[1, 1, 0]]),
                                           "labels": torch.tensor([2])})
    call = split_batch(encoding)
    assert call.args == () and sorted(call.kwargs) == ["attention_mask", "input_ids"]
    assert call.kwargs["attention_mask"].tolist() == [[1, 1, 0]] and call.target.tolist() == [2]


def test_an_unknown_batch_type_is_a_clear_error():
    with pytest.raises(UserError, match="cannot feed a batch of type int.*forward_fn="):
        feed(TwoInputs(), 3)
    with pytest.raises(UserError, match="empty tuple"):
        split_batch(())


@dataclass
class Sample:  # a batch type the default rules do not know
    pixels: torch.Tensor


def test_forward_fn_overrides_the_rules_and_binds_to_data():
    fn = lambda model, batch: model(batch.pixels, batch.pixels)  # noqa: E731
    with torch.no_grad():
        assert float(feed(TwoInputs(), Sample(X1), fn)) == 12.0
        bound = with_forward([Sample(X1), Sample(X2)], fn)
        assert len(bound) == 2 and [float(feed(TwoInputs(), b)) for b in bound] == [12.0, 120.0]
    assert with_forward(bound, fn) is bound and with_forward(None, fn) is None


def test_output_tensor_picks_logits_then_last_hidden_state():
    logits, hidden = torch.ones(2, 3), torch.zeros(2, 4, 5)
    assert output_tensor(logits) is logits
    assert output_tensor({"last_hidden_state": hidden, "logits": logits}) is logits
    assert output_tensor({"pooler_output": logits, "last_hidden_state": hidden}) is hidden
    assert output_tensor((hidden, logits)) is hidden  # transformers' return_dict=False
    with pytest.raises(UserError, match="cannot find the output tensor"):
        output_tensor({"n": 3})


def test_observe_inputs_sees_dict_batches_and_forward_fn_batches():
    model = TwoInputs()
    batches = [{"a": torch.tensor([[-1.0, 4.0]]), "b": torch.tensor([[2.0, 0.0]]), "labels": Y}]
    obs = observe_inputs(model, {"fc": MinMaxObserver()}, batches)["fc"]
    assert [float(v) for v in obs.range()] == [4.0, 5.0]  # fc saw a + 3 b = [5, 4]
    obs = observe_inputs(model, {"fc": MinMaxObserver()}, [Sample(X2)], forward_fn=lambda m, b: m(b.pixels))["fc"]
    assert [float(v) for v in obs.range()] == [10.0, 20.0]


class TupleLayer(nn.Module):
    def forward(self, x):
        return (2 * x, None)  # like a transformers layer: a tuple of outputs


def test_capture_outputs_takes_a_dict_batch_and_the_main_tensor_of_a_tuple_output():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = TupleLayer()

        def forward(self, pixels):
            return self.block(pixels)[0]

    out = capture_outputs(Net(), ["block"], {"pixels": X1, "labels": Y})
    assert out["block"].tolist() == [[2.0, 4.0]]


def test_quantize_with_forward_fn_calibrates_on_the_data():
    net = nn.Sequential(nn.Linear(2, 2))
    data = [Sample(torch.tensor([[-2.0, 1.0]])), Sample(torch.tensor([[0.5, 6.0]]))]
    nc.quantize_(net, nc.LinearQuant(weight_bits=8, act_bits=8), data=data, forward_fn=lambda m, b: m(b.pixels))
    scale, zero_point = choose_qparams(torch.tensor(-2.0), torch.tensor(6.0), IntSpec(bits=8, signed=False, symmetric=False))
    assert torch.equal(input_quantizer(net[0]).scale, scale)
    assert torch.equal(input_quantizer(net[0]).zero_point, zero_point.float())
    with pytest.raises(UserError, match="cannot feed a batch of type Sample"):
        nc.quantize_(nn.Sequential(nn.Linear(2, 2)), nc.LinearQuant(weight_bits=8, act_bits=8), data=data)


def test_pack_batch_round_trips_any_shape():
    batch = ({"input_ids": torch.tensor([[1, 2]]), "mask": torch.tensor([[1, 0]])}, torch.tensor([3]), None, 0.5)
    tensors, skeleton = pack_batch(batch, "ex")
    assert sorted(tensors) == ["ex.0.input_ids", "ex.0.mask", "ex.1"]
    back = unpack_batch(tensors, skeleton)
    assert back[0]["input_ids"].tolist() == [[1, 2]] and back[1].tolist() == [3] and back[2:] == [None, 0.5]


def test_batch_data_stands_in_for_a_dataset_with_your_own_batches():
    batches = [(torch.ones(3, 2), torch.zeros(3, dtype=torch.long)), (torch.ones(2, 2), torch.ones(2, dtype=torch.long))]
    data = BatchData(batches, batches[:1], forward_fn=lambda model, batch: model(batch[0] * 2))
    assert data.train_size == 5 and len(data.train_loader(64, seed=3)) == 2
    assert [float(feed(nn.Identity(), b).sum()) for b in data.test_loader()] == [12.0]  # forward_fn bound
    with pytest.raises(UserError, match="BatchData.test is empty"):
        BatchData(batches, [])
    with pytest.raises(UserError, match="BatchData.train must be re-iterable with a length"):
        BatchData(iter(batches), batches)
    with pytest.raises(UserError, match=r"BatchData.train is a tuple.*\[\(x, y\), \.\.\.\]"):
        BatchData(batches[0], batches)  # one (x, y) batch, not a list of them
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(5, 2), torch.zeros(5).long()), 2)
    assert BatchData(loader, loader).train_size == 5
