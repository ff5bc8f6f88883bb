"""Table 3 accounting (SPEC §4): the formulas, the 14 ratios on real architectures, and `prernn params`."""

from __future__ import annotations

import json
import math

import pytest
import torch
import typer
from typer.testing import CliRunner

from prernn_cli.architectures import architecture_input, build_architecture, build_empty_architecture, paper_aliases
from prernn_cli.checkpoint import save_converted
from prernn_cli.cli import app
from prernn_cli.cli.options import parse_cells, parse_layer_names
from prernn_cli.conversion import convert
from prernn_cli.errors import ConversionError, LayerError
from prernn_cli.inspection import account_checkpoint, account_layers
from prernn_cli.params import (
    ALL_CELLS,
    LayerShape,
    count_parameters,
    match_traditional_hidden_size,
    prernn_params,
    sih_params,
    table3_ratio,
    traditional_params,
)
from prernn_cli.spec import CellType, Design, LayerKind

LSTM, GRU, VRNN = CellType.LSTM, CellType.GRU, CellType.VRNN

# The paper's Table 3 (SIH ÷ PreRNN), columns as (architecture, --layer value).
TABLE3 = [
    ("vgg16", "fc6", 0.18, 0.20),
    ("vgg16", "fc7", 0.57, 0.60),
    ("vgg16", "fc6,fc7", 0.27, 0.30),
    ("c3d", "fc6", 0.40, 0.43),
    ("c3d", "fc7", 0.57, 0.60),
    ("c3d", "fc6,fc7", 0.47, 0.50),
    ("resnet50", "res5c", 0.84, 0.86),
]

# Real shapes of those layers, written out by hand (the architecture tests below find them in the networks).
HAND_SHAPES = {
    ("vgg16", "fc6"): LayerShape("classifier.0", 25088 * 4096, 4096, 25088, alias="fc6"),
    ("vgg16", "fc7"): LayerShape("classifier.3", 4096 * 4096, 4096, 4096, alias="fc7"),
    ("c3d", "fc6"): LayerShape("fc6", 8192 * 4096, 4096, 8192, alias="fc6"),
    ("c3d", "fc7"): LayerShape("fc7", 4096 * 4096, 4096, 4096, alias="fc7"),
    ("resnet50", "res5c"): LayerShape(
        "layer4.2.conv3",
        2048 * 512,
        2048,
        512,
        bias=False,
        batchnorm_params=2 * 2048,
        kind=LayerKind.CONV,
        alias="res5c",
    ),
}


def _hand_layers(arch: str, layers: str) -> list[LayerShape]:
    return [HAND_SHAPES[(arch, name)] for name in layers.split(",")]


# ------------------------------------------------------------------ formulas


@pytest.mark.parametrize(("arch", "layers", "lstm", "gru"), TABLE3)
def test_table3_from_formulas(arch, layers, lstm, gru):
    shapes = _hand_layers(arch, layers)
    assert round(table3_ratio(shapes, LSTM), 2) == lstm
    assert round(table3_ratio(shapes, GRU), 2) == gru


def test_formulas_match_spec_section_4():
    fc6 = HAND_SHAPES[("vgg16", "fc6")]
    w, h = fc6.weight_numel, fc6.hidden_size
    for cell in ALL_CELLS:
        g = cell.num_gates
        assert prernn_params(fc6, cell) == (g - 1) * w + g * h * h
        assert traditional_params(4096, 1000, cell) == g * (4096 * 1000 + 1000 * 1000)
    assert sih_params(fc6, LSTM) == 4 * h * h
    assert sih_params(fc6, GRU) == 3 * h * h
    # PreVRNN adds only W_hh: the pretrained W is the single input-to-hidden weight.
    assert prernn_params(fc6, VRNN) == h * h


def test_vrnn_has_no_sih():
    fc7 = HAND_SHAPES[("vgg16", "fc7")]
    assert sih_params(fc7, VRNN) is None
    assert table3_ratio([fc7], VRNN) is None
    report = count_parameters([fc7], feature_size=4096, base_params=10)
    vrnn = report.cell(VRNN)
    assert vrnn.sih.available is False
    assert vrnn.sih.recurrent_params is None and vrnn.sih.total_params is None
    assert vrnn.sih_over_prernn is None
    assert report.to_dict()["cells"]["vrnn"]["designs"]["sih"]["available"] is False


def test_biases_are_counted_separately():
    fc7 = HAND_SHAPES[("vgg16", "fc7")]
    res = HAND_SHAPES[("resnet50", "res5c")]
    for cell in ALL_CELLS:
        g = cell.num_gates
        # fc: G-1 extra copies of the pretrained bias.
        assert prernn_params(fc7, cell, biases=True) - prernn_params(fc7, cell) == (g - 1) * 4096
        # conv without bias: G-1 extra copies of its BatchNorm's weight and bias.
        assert prernn_params(res, cell, biases=True) - prernn_params(res, cell) == (g - 1) * 2 * 2048
        # traditional: each layer's bias_ih (the cells have no bias_hh).
        assert (
            traditional_params(100, 7, cell, num_layers=2, biases=True) - traditional_params(100, 7, cell, num_layers=2)
            == 2 * g * 7
        )
    assert sih_params(fc7, LSTM, biases=True) == sih_params(fc7, LSTM)


@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("input_size", [1, 7, 512, 4096])
def test_matched_traditional_hidden_size_is_the_closest(cell, num_layers, input_size):
    for target in [0, 1, 5, 99, 12_345, 4096 * 4096, 7 * 4096 * 4096 + 3]:
        chosen = match_traditional_hidden_size(target, input_size, cell, num_layers)
        assert chosen >= 1
        best = abs(traditional_params(input_size, chosen, cell, num_layers) - target)
        root = (-input_size + math.sqrt(input_size**2 + 4 * (2 * num_layers - 1) * target / cell.num_gates)) / (
            2 * (2 * num_layers - 1)
        )
        for other in range(max(1, int(root) - 50), int(root) + 50):
            assert best <= abs(traditional_params(input_size, other, cell, num_layers) - target), (
                target,
                chosen,
                other,
            )


def test_counts_are_monotonic():
    for cell in ALL_CELLS:
        counts = [traditional_params(256, h, cell, 2) for h in range(0, 300)]
        assert counts == sorted(counts) and len(set(counts)) == len(counts)
        sizes = [match_traditional_hidden_size(t, 256, cell, 1) for t in range(0, 2_000_000, 9_973)]
        assert sizes == sorted(sizes)
    # more gates, more recurrent parameters; SIH never exceeds PreRNN
    shape = LayerShape("x", 300 * 200, 200, 300)
    assert prernn_params(shape, VRNN) < prernn_params(shape, GRU) < prernn_params(shape, LSTM)
    assert sih_params(shape, GRU) < sih_params(shape, LSTM)
    assert all(table3_ratio([shape], cell) <= 1 for cell in (LSTM, GRU))


def test_several_layers_sum_and_traditional_stack():
    fc6, fc7 = HAND_SHAPES[("vgg16", "fc6")], HAND_SHAPES[("vgg16", "fc7")]
    # default: one traditional layer matched to the summed PreRNN count (what `convert --traditional` builds)
    report = count_parameters([fc6, fc7], feature_size=4096, base_params=1_000)
    assert report.traditional_layers == 1
    for cell in ALL_CELLS:
        acc = report.cell(cell)
        assert acc.prernn.recurrent_params == prernn_params(fc6, cell) + prernn_params(fc7, cell)
        assert acc.prernn.hidden_sizes == (4096, 4096) and acc.prernn.num_layers == 2
        tra = acc.traditional
        assert tra.num_layers == 1 and tra.hidden_sizes == (acc.traditional_hidden_size,)
        assert tra.recurrent_params == traditional_params(4096, acc.traditional_hidden_size, cell)
        assert abs(tra.recurrent_params - acc.prernn.recurrent_params) / acc.prernn.recurrent_params < 1e-3
        for count in acc.designs:
            if count.available:  # no output layer given: the head is kept
                assert count.total_params == 1_000 + count.recurrent_params_with_biases
    # the paper's 2-layer TraRNN: a stack of two layers of one size, matched as a whole
    stack = count_parameters([fc6, fc7], feature_size=4096, base_params=0, traditional_layers=2)
    tra = stack.cell(LSTM).traditional
    assert (
        stack.traditional_layers == 2
        and tra.num_layers == 2
        and tra.hidden_sizes == (stack.cell(LSTM).traditional_hidden_size,) * 2
    )
    assert tra.recurrent_params == traditional_params(4096, tra.hidden_sizes[0], LSTM, 2)
    assert stack.cell(LSTM).traditional_hidden_size < report.cell(LSTM).traditional_hidden_size
    assert "sizing estimate" in stack.traditional_note
    # the traditional design re-makes the output layer (4096 -> 1000) to read H' features
    with_head = count_parameters(
        [fc7], feature_size=4096, base_params=10**8, output_size=1000, output_layer_params=4096 * 1000 + 1000
    )
    for acc in with_head.cells:
        h = acc.traditional_hidden_size
        assert acc.traditional.total_params == 10**8 + acc.traditional.recurrent_params_with_biases + (h - 4096) * 1000
        assert acc.prernn.total_params == 10**8 + acc.prernn.recurrent_params_with_biases


def test_report_json_and_errors():
    report = count_parameters(
        [HAND_SHAPES[("c3d", "fc6")]], feature_size=4096, base_params=5, cells=[GRU], architecture="c3d"
    )
    doc = json.loads(report.to_json())
    assert list(doc["cells"]) == ["gru"]
    assert set(doc["cells"]["gru"]["designs"]) == {d.value for d in Design}
    assert round(doc["cells"]["gru"]["sih_over_prernn"], 2) == 0.43
    with pytest.raises(ConversionError):
        count_parameters([], feature_size=4096, base_params=0)
    with pytest.raises(ConversionError):
        count_parameters([HAND_SHAPES[("c3d", "fc6")]], feature_size=None, base_params=0)
    with pytest.raises(ValueError):
        LayerShape("bad", 0, 4, 4)
    assert parse_cells(None) == ALL_CELLS
    assert parse_cells(["gru,lstm", "gru"]) == (GRU, LSTM)
    with pytest.raises(typer.BadParameter, match="'lstn' is not one of 'vrnn', 'lstm', 'gru'"):
        parse_cells(["lstn"])
    assert parse_layer_names("fc6, fc7") == ["fc6", "fc7"]
    with pytest.raises(LayerError):
        parse_layer_names(" , ")


# ------------------------------------------------------------------ real architectures (meta device)


@pytest.mark.parametrize(("arch", "layers", "lstm", "gru"), TABLE3)
def test_table3_on_built_architectures(arch, layers, lstm, gru):
    report = account_checkpoint(None, layers.split(","), arch=arch)
    # the layers found in the network are the paper's
    expected = _hand_layers(arch, layers)
    assert [(s.name, s.weight_numel, s.hidden_size, s.input_size) for s in report.layers] == [
        (s.name, s.weight_numel, s.hidden_size, s.input_size) for s in expected
    ]
    assert round(report.cell(LSTM).sih_over_prernn, 2) == lstm
    assert round(report.cell(GRU).sih_over_prernn, 2) == gru
    assert report.feature_size == (2048 if arch == "resnet50" else 4096)
    assert report.base_params > 10_000_000


# ------------------------------------------------------------------ CLI

runner = CliRunner()


def _invoke(*args):
    result = runner.invoke(app, list(args))
    return result


def test_cli_json_vgg16_fc6():
    result = _invoke("params", "--arch", "vgg16", "--layer", "fc6", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)  # one document, nothing else
    assert round(doc["cells"]["lstm"]["sih_over_prernn"], 2) == 0.18
    assert round(doc["cells"]["gru"]["sih_over_prernn"], 2) == 0.20
    assert doc["cells"]["vrnn"]["sih_over_prernn"] is None
    assert doc["layers"][0]["name"] == "classifier.0"
    assert doc["base_params"] == 138_357_544  # torchvision vgg16


def test_cli_table_and_cell_filter():
    result = _invoke("params", "--arch", "c3d", "--layer", "fc6,fc7", "--cell", "lstm")
    assert result.exit_code == 0, result.output
    assert "0.47×" in result.stdout
    assert "gru" not in result.stdout.split("Recurrent parameters")[1].split("traditional:")[0]
    assert "weights only" in result.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["params", "--layer", "fc6"], "--arch"),
        (["params", "--arch", "vgg16", "--layer", "fc9"], "fc9"),
        (["params", "--arch", "vgg16", "--layer", "classifier.6"], "classifier.6"),  # the output layer
        (["params", "--arch", "no_such_net", "--layer", "fc6"], "no_such_net"),
    ],
)
def test_cli_errors_are_one_line(args, needle):
    result = _invoke(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert result.stdout == ""


def test_cli_unknown_cell_is_a_usage_error():
    result = runner.invoke(
        app, ["params", "--arch", "vgg16", "--layer", "fc6", "--cell", "lstm,rnn"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2 and result.stdout == ""
    assert [line for line in result.stderr.splitlines() if "'rnn' is not one of 'vrnn', 'lstm', 'gru'" in line], (
        result.stderr
    )


# ------------------------------------------------------------------ agreement with the models `convert` builds


@pytest.mark.parametrize(
    ("arch", "layers"), [("digit_vgg", ["fc6", "fc7"]), ("digit_resnet", ["res5c"]), ("digit_c3d", ["fc6"])]
)
def test_totals_match_converted_models(arch, layers):
    """``total_params`` is the parameter count of what ``convert`` builds; traditional H' is the one it picks."""
    model = build_empty_architecture(arch)  # meta device: shapes only
    input_spec, aliases = architecture_input(arch), paper_aliases(arch, model)
    report = account_layers(model, input_spec, layers, aliases, architecture=arch)
    for acc in report.cells:
        for count in acc.designs:
            if not count.available:
                continue
            converted = convert(
                model,
                arch,
                input_spec,
                layers,
                acc.cell,
                aliases=aliases,
                sih=count.design is Design.SIH,
                traditional=count.design is Design.TRADITIONAL,
            )
            assert sum(p.numel() for p in converted.parameters()) == count.total_params, (acc.cell, count.design)
            assert tuple(layer.hidden_size for layer in converted.spec.layers) == count.hidden_sizes


def test_cli_with_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": build_architecture("digit_vgg").state_dict()}, path)
    result = _invoke("params", str(path), "--layer", "fc6,fc7", "--cell", "lstm,gru", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["architecture"] == "digit_vgg"  # identified from the weights
    assert [layer["name"] for layer in doc["layers"]] == ["classifier.0", "classifier.3"]
    assert list(doc["cells"]) == ["lstm", "gru"]
    fc6 = LayerShape("classifier.0", 1024 * 256, 256, 1024)
    fc7 = LayerShape("classifier.3", 256 * 256, 256, 256)
    assert doc["cells"]["lstm"]["sih_over_prernn"] == pytest.approx(table3_ratio([fc6, fc7], LSTM))
    assert doc["cells"]["gru"]["designs"]["prernn"]["recurrent_params"] == prernn_params(fc6, GRU) + prernn_params(
        fc7, GRU
    )


def test_cli_refuses_a_converted_model(tmp_path):
    base = build_architecture("digit_vgg")
    converted = convert(
        base, "digit_vgg", architecture_input("digit_vgg"), ["fc6"], LSTM, aliases=paper_aliases("digit_vgg", base)
    )
    path = tmp_path / "converted.safetensors"
    save_converted(converted, path)
    result = _invoke("params", str(path), "--layer", "fc6")
    assert result.exit_code == 2, result.output
    assert "already a converted prernn model" in result.stderr and "--arch digit_vgg" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
