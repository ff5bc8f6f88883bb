"""`prernn analyze`: gate saturation counts, figures, summary and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from prernn_cli.analyze import (
    HISTOGRAM_BINS,
    UNTRAINED_PREFIX,
    GateAccumulator,
    check_gated,
    figure_layout,
    gate_figure,
    layer_readings,
    save_figure,
    summarize,
)
from prernn_cli.cells import PreGRU, PreLSTM
from prernn_cli.errors import UserInputError
from prernn_cli.spec import CellType, Design, FrameKind, LayerKind, ModelSpec, RecurrentLayerSpec


def _spec(cell: CellType, hidden_sizes, traditional=False) -> ModelSpec:
    layers = tuple(
        RecurrentLayerSpec(
            name=f"fc{6 + i}", kind=LayerKind.NEW if traditional else LayerKind.FC, hidden_size=h, input_size=8
        )
        for i, h in enumerate(hidden_sizes)
    )
    return ModelSpec(
        base_architecture="digit_vgg",
        layers=layers,
        cell=cell,
        design=Design.TRADITIONAL if traditional else Design.PRERNN,
    )


class _Recorder:
    """Keeps every observed activation (for brute-force checks)."""

    def __init__(self):
        self.steps: list[tuple[int, dict[str, torch.Tensor]]] = []

    def __call__(self, layer_index, gates):
        self.steps.append((layer_index, {k: v.detach().clone() for k, v in gates.items()}))


def _both(*observers):
    def observe(layer_index, gates):
        for observer in observers:
            observer(layer_index, gates)

    return observe


# ---------------------------------------------------------------- exact counts on a forced cell
def test_lstm_forced_saturation_gives_exact_counts():
    torch.manual_seed(0)
    hidden, batch, steps = 6, 2, 4
    cell = PreLSTM(input_size=5, hidden_size=hidden)
    with torch.no_grad():
        cell.weight_ih.zero_()
        cell.weight_hh.zero_()
        i_bias = torch.tensor([20.0, 20.0, 20.0, -20.0, -20.0, 0.0])  # 3 open, 2 closed, 1 at 0.5
        f_bias = torch.full((hidden,), -20.0)  # always closed
        g_bias = torch.zeros(hidden)
        o_bias = torch.full((hidden,), 20.0)  # always open
        cell.bias_ih.copy_(torch.cat([i_bias, f_bias, g_bias, o_bias]))  # torch order i, f, g, o
    acc = GateAccumulator(CellType.LSTM, [hidden])
    cell(torch.randn(batch, steps, 5), gate_observer=lambda i, g: acc(0, g))
    n = batch * steps
    assert acc.observations == [n]
    assert acc.left[0]["i"].tolist() == [0, 0, 0, n, n, 0]
    assert acc.right[0]["i"].tolist() == [n, n, n, 0, 0, 0]
    assert acc.left[0]["f"].tolist() == [n] * hidden and acc.right[0]["f"].tolist() == [0] * hidden
    assert acc.right[0]["o"].tolist() == [n] * hidden and acc.left[0]["o"].tolist() == [0] * hidden
    expected_i = [0] * HISTOGRAM_BINS
    expected_i[0], expected_i[5], expected_i[9] = 2 * n, n, 3 * n
    assert acc.histogram[0]["i"].tolist() == expected_i
    assert "g" not in acc.left[0]  # the candidate is not a gate

    analysis = summarize(acc, _spec(CellType.LSTM, [hidden]), clips=batch)
    by_gate = {g.gate: g for g in analysis.gates}
    assert by_gate["i"].left_pct == pytest.approx(100 * 2 / 6)
    assert by_gate["i"].right_pct == pytest.approx(100 * 3 / 6)
    assert by_gate["i"].unsaturated_pct == pytest.approx(100 * 1 / 6)
    assert (by_gate["f"].left_pct, by_gate["o"].right_pct) == (100.0, 100.0)
    np.testing.assert_array_equal(analysis.unit_left[(0, "i")], [0, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(analysis.unit_right[(0, "f")], np.zeros(hidden))
    assert analysis.layers[0].verdict == "mostly"
    assert "mostly saturated" in analysis.reading and "long memory" in analysis.reading


def test_gru_forced_saturation_gives_exact_counts():
    torch.manual_seed(0)
    hidden, batch, steps = 4, 1, 3
    cell = PreGRU(input_size=3, hidden_size=hidden)
    with torch.no_grad():
        cell.weight_ih.zero_()
        cell.weight_hh.zero_()
        cell.bias_ih.copy_(
            torch.cat([torch.full((hidden,), 15.0), torch.tensor([-15.0, -15.0, 0.0, 0.0]), torch.zeros(hidden)])
        )
    acc = GateAccumulator(CellType.GRU, [hidden])
    cell(torch.randn(batch, steps, 3), gate_observer=lambda i, g: acc(0, g))
    n = batch * steps
    assert acc.right[0]["r"].tolist() == [n] * hidden
    assert acc.left[0]["z"].tolist() == [n, n, 0, 0]
    assert acc.histogram[0]["r"].tolist() == [0] * 9 + [hidden * n]
    assert acc.histogram[0]["z"].tolist() == [2 * n, 0, 0, 0, 0, 2 * n, 0, 0, 0, 0]


# ---------------------------------------------------------------- accumulator == brute force
@pytest.mark.parametrize("cell_class,cell", [(PreLSTM, CellType.LSTM), (PreGRU, CellType.GRU)])
def test_accumulator_matches_brute_force(cell_class, cell):
    torch.manual_seed(1)
    hidden = 16
    layer = cell_class(input_size=8, hidden_size=hidden)
    with torch.no_grad():
        layer.weight_ih.mul_(8.0)  # spread activations over the whole [0, 1] range
    acc, recorder = GateAccumulator(cell, [hidden, hidden]), _Recorder()
    for index in (0, 1):  # the same layer stands in for two stacked layers
        for _ in range(3):  # three batches
            layer(torch.randn(2, 4, 8), gate_observer=lambda i, g, index=index: _both(acc, recorder)(index, g))
    for index in (0, 1):
        for gate in ("i", "f", "o") if cell is CellType.LSTM else ("r", "z"):
            values = torch.stack([g[gate] for i, g in recorder.steps if i == index]).reshape(-1, hidden).numpy()
            assert acc.observations[index] == values.shape[0] == 3 * 2 * 4
            np.testing.assert_array_equal(acc.left[index][gate].numpy(), (values < np.float32(0.1)).sum(0))
            np.testing.assert_array_equal(acc.right[index][gate].numpy(), (values > np.float32(0.9)).sum(0))
            edges = np.array([k / 10 for k in range(1, 10)], dtype=np.float32)
            bins = (values[..., None] >= edges).sum(-1)  # bin k holds edges[k-1] <= a < edges[k]
            np.testing.assert_array_equal(
                acc.histogram[index][gate].numpy(), np.bincount(bins.reshape(-1), minlength=10)
            )
            assert acc.histogram[index][gate][0] == acc.left[index][gate].sum()  # bin 0 is exactly "left-saturated"
            assert (acc.histogram[index][gate] > 0).sum() >= 5  # the activations really spread over the bins


def test_accumulator_memory_is_fixed():
    acc = GateAccumulator(CellType.LSTM, [32])
    sizes = lambda: sum(t.numel() for d in acc.left + acc.right + acc.histogram for t in d.values())  # noqa: E731
    before = sizes()
    for _ in range(50):
        acc(0, {g: torch.rand(4, 32) for g in "ifog"})
    assert sizes() == before and acc.observations == [200]


def test_vrnn_is_refused():
    with pytest.raises(UserInputError, match="VRNN has no gates"):
        check_gated(_spec(CellType.VRNN, [4]))
    with pytest.raises(UserInputError, match="no gates"):
        GateAccumulator(CellType.VRNN, [4])


# ---------------------------------------------------------------- reading rules
def test_reading_rules_follow_the_numbers():
    acc = GateAccumulator(CellType.LSTM, [4, 4])
    saturated = {g: torch.tensor([[0.01, 0.99, 0.02, 0.98]]) for g in "ifo"}
    middle = {g: torch.full((1, 4), 0.5) for g in "ifo"}
    acc(0, saturated)
    acc(1, middle)
    trained = _spec(CellType.LSTM, [4, 4]).with_updates(task="classify")
    analysis = summarize(acc, trained, clips=1)
    assert [r.verdict for r in analysis.layers] == ["mostly", "rarely"]
    assert analysis.reading.startswith("layer 1 gates are mostly saturated (100% saturated): long memory")
    assert analysis.layers[0].long_memory_units == 2 and analysis.layers[1].long_memory_units == 0
    assert ", 2 of 4 forget-gate units open most of the time (long-lived memory cells)" in analysis.reading
    untrained = summarize(acc, _spec(CellType.LSTM, [4, 4]), clips=1)  # no task: never trained
    assert untrained.reading == UNTRAINED_PREFIX + analysis.reading
    assert (
        "layer 2 gates rarely saturate (0% saturated): its state is barely used — consider converting one layer only"
        in analysis.reading
    )
    single = GateAccumulator(CellType.GRU, [4])
    single(0, {"r": torch.tensor([[0.01, 0.5, 0.5, 0.5]]), "z": torch.tensor([[0.05, 0.95, 0.5, 0.5]])})
    (only,) = layer_readings(summarize(single, _spec(CellType.GRU, [4]), clips=1).gates)
    assert only.verdict == "partly" and only.saturated_share == pytest.approx(3 / 8)


# ---------------------------------------------------------------- figures
def _synthetic(cell: CellType, hidden_sizes, traditional=False, seed=0):
    torch.manual_seed(seed)
    acc = GateAccumulator(cell, hidden_sizes)
    gates = "ifo" if cell is CellType.LSTM else "rz"
    for _ in range(5):
        for index, hidden in enumerate(hidden_sizes):
            acc(index, {g: torch.rand(2, hidden) for g in gates})
    return summarize(acc, _spec(cell, hidden_sizes, traditional), clips=10)


def _png(path):
    with Image.open(path) as image:
        image.verify()
    image = Image.open(path)
    image.load()
    return image


def test_lstm_figure_is_a_png_with_one_panel_per_layer_and_gate(tmp_path):
    analysis = _synthetic(CellType.LSTM, [8, 8])
    layout = figure_layout([analysis])
    assert (layout.rows, len(layout.columns), layout.panels) == (2, 3, 6)
    figure = gate_figure([analysis])
    axes = [ax for ax in figure.axes if ax.axison]
    assert len(axes) == 6
    assert all(len(ax.collections) == 1 and len(ax.lines) == 1 for ax in axes)  # scatter + diagonal
    diagonal = axes[0].lines[0].get_xydata()
    np.testing.assert_allclose(diagonal.sum(axis=1), 1.0)
    np.testing.assert_allclose(axes[0].collections[0].get_offsets()[:, 0], analysis.unit_left[(0, "i")])
    path = tmp_path / "gates.png"
    save_figure(figure, path, layout, [analysis])
    image = _png(path)
    assert image.format == "PNG"
    assert image.size == tuple(int(round(v)) for v in figure.get_size_inches() * figure.dpi)
    assert image.text["prernn:panels"] == "6" and json.loads(image.text["prernn:models"]) == ["PreLSTM"]
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left nothing behind


def test_compare_figure_puts_both_models_side_by_side(tmp_path):
    pre = _synthetic(CellType.GRU, [8, 8])
    tra = _synthetic(CellType.GRU, [8], traditional=True, seed=1)
    layout = figure_layout([pre, tra])
    assert layout.rows == 2 and layout.columns == ((0, "r"), (0, "z"), (1, "r"), (1, "z")) and layout.panels == 6
    figure = gate_figure([pre, tra])
    shown = [ax for ax in figure.axes if ax.axison]
    assert len(shown) == 6 and len(figure.axes) == 8  # TraGRU has no layer 2: two empty slots
    assert all(len(ax.patches) == HISTOGRAM_BINS for ax in shown)
    heights = [p.get_height() for p in shown[0].patches]
    assert sum(heights) == pytest.approx(1.0)
    titles = [ax.get_title() for ax in shown]
    assert any(t.startswith("PreGRU L1") for t in titles) and any(t.startswith("TraGRU L1") for t in titles)
    save_figure(figure, tmp_path / "gates.png", layout, [pre, tra])
    image = _png(tmp_path / "gates.png")
    assert json.loads(image.text["prernn:models"]) == ["PreGRU", "TraGRU"] and image.text["prernn:panels"] == "6"


# ---------------------------------------------------------------- clips
def _write_clips(root, classes=("left", "right"), per_class=2, frames=4, size=32, seed=0):
    rng = np.random.default_rng(seed)
    for name in classes:
        for c in range(per_class):
            folder = root / name / f"clip{c}"
            folder.mkdir(parents=True)
            for t in range(frames):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                    folder / f"frame_{t:04d}.png"
                )
    return root


def test_clip_batches_stream_whole_clips_or_sampled_steps(tmp_path):
    from prernn_cli.analyze import clip_batches, select_clips
    from prernn_cli.spec import InputSpec

    data = _write_clips(tmp_path / "clips", per_class=3, frames=5)
    spec = InputSpec(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    whole = list(clip_batches(data, spec))
    assert len(whole) == 6 and all(s.frames.shape == (1, 5, 3, 32, 32) and s.first for s in whole)
    windows = list(clip_batches(data, spec, window=2))  # 5 steps -> windows of 2, 2, 1 carrying the state
    assert [(s.frames.shape[1], s.first) for s in windows[:3]] == [(2, True), (2, False), (1, False)]
    torch.testing.assert_close(torch.cat([s.frames for s in windows[:3]], dim=1), whole[0].frames)
    sampled = list(clip_batches(data, spec, steps=3, batch_size=4))
    assert [s.frames.shape[:2] for s in sampled] == [(4, 3), (2, 3)]
    assert len(list(clip_batches(data, spec, max_clips=2))) == 2
    assert select_clips(list(range(6)), 2) == [0, 3]  # one clip of each class
    snippet = InputSpec(frame_kind=FrameKind.SNIPPET, size=(32, 32), snippet_length=2, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert next(iter(clip_batches(data, snippet))).frames.shape == (1, 2, 3, 2, 32, 32)  # 5 frames -> 2 snippets of 2
    skipped = []
    assert list(clip_batches(data, spec, steps=9, skipped=skipped)) == [] and len(skipped) == 6  # too short


# ---------------------------------------------------------------- CLI on real files
from typer.testing import CliRunner  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Converted DigitVGG models (random weights, seeded) saved with save_converted, and PNG clips."""
    from prernn_cli.architectures import architecture_input
    from prernn_cli.architectures.samples import DigitVGG
    from prernn_cli.checkpoint import save_converted
    from prernn_cli.conversion import convert

    root = tmp_path_factory.mktemp("analyze")
    torch.manual_seed(0)
    base = DigitVGG().eval()
    spec = architecture_input("digit_vgg")
    paths = {}
    for name, layers, cell, traditional in (
        ("pre_lstm", ["classifier.0", "classifier.3"], CellType.LSTM, False),
        ("tra_lstm", ["classifier.0"], CellType.LSTM, True),
        ("pre_gru", ["classifier.0"], CellType.GRU, False),
        ("tra_gru", ["classifier.0"], CellType.GRU, True),
        ("pre_vrnn", ["classifier.0"], CellType.VRNN, False),
    ):
        torch.manual_seed(1)
        model = convert(base, "digit_vgg", spec, layers, cell, traditional=traditional)
        paths[name] = root / f"{name}.safetensors"
        save_converted(model, paths[name])
    # a PreLSTM whose gates are forced: zero weights, biases i = +20, f = -20, o = +20 on even units / -20 on odd
    forced = convert(base, "digit_vgg", spec, ["classifier.0"], CellType.LSTM)
    layer = forced.recurrent_layers[0]
    hidden = layer.hidden_size
    with torch.no_grad():
        layer.weight_ih.zero_()
        layer.weight_hh.zero_()
        o_bias = torch.tensor([20.0, -20.0]).repeat(hidden // 2)
        layer.bias_ih.copy_(
            torch.cat([torch.full((hidden,), 20.0), torch.full((hidden,), -20.0), torch.zeros(hidden), o_bias])
        )
    paths["forced"] = root / "forced.safetensors"
    save_converted(forced, paths["forced"])
    paths["clips"] = _write_clips(root / "clips", per_class=2, frames=4)
    return paths


def _run(*args):
    return runner.invoke(__import__("prernn_cli.cli", fromlist=["app"]).app, ["analyze", *map(str, args)])


def test_cli_writes_figure_summary_and_table(files, tmp_path):
    out = tmp_path / "report"
    result = _run(files["pre_lstm"], "--data", files["clips"], "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "Gate saturation" in result.stdout and "PreLSTM" in result.stdout
    assert "consider converting one layer only" in result.stdout or "layer 2 gates" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    (model,) = summary["models"]
    assert model["label"] == "PreLSTM" and model["clips"] == 4 and model["steps"] == 16
    assert [(g["layer"], g["gate"]) for g in model["gates"]] == [
        (1, "i"),
        (1, "f"),
        (1, "o"),
        (2, "i"),
        (2, "f"),
        (2, "o"),
    ]
    for gate in model["gates"]:
        total = gate["left_saturated_pct"] + gate["right_saturated_pct"] + gate["unsaturated_pct"]
        assert total == pytest.approx(100.0, abs=1e-2)
        assert sum(gate["histogram"]) == gate["units"] * gate["observations_per_unit"] == 256 * 16
    # the sample net's 10-digit head cannot be scored on left/right clips: said so, then the gates
    assert model["reading"].startswith(UNTRAINED_PREFIX + "accuracy not measured (the model has 10 outputs")
    assert "; layer 1 gates" in model["reading"] and model["performance"]["value"] is None
    image = _png(out / "gates.png")
    assert image.text["prernn:panels"] == "6" and image.text["prernn:rows"] == "2"
    assert sorted(p.name for p in out.iterdir()) == ["gates.png", "summary.json"]  # no temporary files left


def test_cli_forced_saturation_exact_counts_in_json(files, tmp_path):
    result = _run(files["forced"], "--data", files["clips"], "-o", tmp_path / "r", "--json")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)  # exactly one JSON document on stdout
    gates = {g["gate"]: g for g in document["models"][0]["gates"]}
    assert gates["i"]["right_saturated_pct"] == 100.0 and gates["i"]["left_saturated_pct"] == 0.0
    assert gates["f"]["left_saturated_pct"] == 100.0 and gates["f"]["unsaturated_pct"] == 0.0
    assert gates["o"]["left_saturated_pct"] == 50.0 and gates["o"]["right_saturated_pct"] == 50.0
    n = 4 * 4 * 256  # clips x frames x units
    assert gates["o"]["histogram"] == [n // 2] + [0] * 8 + [n // 2]
    assert document["models"][0]["layer_readings"][0]["verdict"] == "mostly"
    assert (
        document["panels"] == 3
        and json.loads((tmp_path / "r" / "summary.json").read_text())["models"][0]["gates"][0]["gate"] == "i"
    )


def test_cli_compare_draws_both_models_in_one_figure(files, tmp_path):
    out = tmp_path / "cmp"
    result = _run(
        files["pre_gru"],
        "--compare",
        files["tra_gru"],
        "--data",
        files["clips"],
        "-o",
        out,
        "--max-clips",
        "2",
        "--steps",
        "3",
    )
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["gates.png", "summary.json"]
    image = _png(out / "gates.png")
    assert json.loads(image.text["prernn:models"]) == ["PreGRU", "TraGRU"]
    assert json.loads(image.text["prernn:columns"]) == [
        ["PreGRU", "r"],
        ["PreGRU", "z"],
        ["TraGRU", "r"],
        ["TraGRU", "z"],
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert [m["label"] for m in summary["models"]] == ["PreGRU", "TraGRU"]
    assert all(m["clips"] == 2 and m["steps"] == 6 for m in summary["models"])
    assert "PreGRU" in result.stdout and "TraGRU" in result.stdout


def test_cli_compare_lstm_pair_labels_same_design_by_file(files, tmp_path):
    result = _run(
        files["pre_lstm"],
        "--compare",
        files["tra_lstm"],
        "--data",
        files["clips"],
        "-o",
        tmp_path / "c",
        "--max-clips",
        "1",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["panels"] == 6 + 3
    same = _run(
        files["tra_lstm"],
        "--compare",
        files["tra_lstm"],
        "--data",
        files["clips"],
        "-o",
        tmp_path / "s",
        "--max-clips",
        "1",
        "--json",
    )
    assert [m["label"] for m in json.loads(same.stdout)["models"]] == ["TraLSTM (tra_lstm)"] * 2


def test_cli_refuses_vrnn_with_one_line_error(files, tmp_path):
    result = _run(files["pre_vrnn"], "--data", files["clips"], "-o", tmp_path / "v")
    assert result.exit_code == 2
    assert "VRNN has no gates" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "v").exists()
    compared = _run(files["pre_lstm"], "--compare", files["pre_vrnn"], "--data", files["clips"], "-o", tmp_path / "v")
    assert compared.exit_code == 2 and "VRNN has no gates" in compared.stderr


def test_cli_bad_inputs_are_clear_errors(files, tmp_path):
    missing = _run(files["pre_gru"], "--data", tmp_path / "nope", "-o", tmp_path / "m")
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    assert not (tmp_path / "m").exists()  # a failed analysis leaves no empty report folder
    a_file = tmp_path / "file"
    a_file.write_text("x")
    clash = _run(files["pre_gru"], "--data", files["clips"], "-o", a_file)
    assert clash.exit_code == 2 and "is a file" in clash.stderr
    not_a_model = _run(files["clips"] / "left" / "clip0" / "frame_0000.png", "--data", files["clips"])
    assert not_a_model.exit_code == 2


def test_cli_all_clips_too_short_is_a_clear_error(files, tmp_path):
    result = _run(files["pre_gru"], "--data", files["clips"], "-o", tmp_path / "t", "--steps", "9")
    assert result.exit_code == 2 and "were skipped" in result.stderr and "too short" in result.stderr
    assert not (tmp_path / "t").exists()


def test_windowed_clips_carry_the_state_exactly(files):
    from prernn_cli.analyze import analyze_model, clip_batches
    from prernn_cli.checkpoint import load_converted

    model = load_converted(files["pre_lstm"])
    whole = analyze_model(model, clip_batches(files["clips"], model.spec.input, max_clips=2))
    windowed = analyze_model(model, clip_batches(files["clips"], model.spec.input, max_clips=2, window=3))
    assert (whole.clips, whole.steps) == (windowed.clips, windowed.steps) == (2, 8)
    for key, fractions in whole.unit_left.items():
        np.testing.assert_array_equal(fractions, windowed.unit_left[key])
        np.testing.assert_array_equal(whole.unit_right[key], windowed.unit_right[key])
    assert [g.histogram for g in whole.gates] == [g.histogram for g in windowed.gates]


# ---------------------------------------------------------------- the task metric beside the gates


def test_chance_rule_is_the_exact_binomial_upper_end():
    from math import comb

    from prernn_cli.analyze import CHANCE_TAIL, better_than_chance, chance_upper

    for n, p in ((4, 0.5), (16, 0.5), (40, 0.5), (40, 0.25), (200, 0.1)):
        tail = [sum(comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k + 1, n + 1)) for k in range(n + 1)]
        assert chance_upper(n, p) == min(k for k in range(n + 1) if tail[k] <= CHANCE_TAIL)
    assert chance_upper(40, 0.5) == 26  # 26/40 = 0.650 is no better than a coin; 27/40 is
    assert not better_than_chance(26, 40, 0.5) and better_than_chance(27, 40, 0.5)
    assert not better_than_chance(4, 4, 0.5)  # 4 of 4 clips is still chance's 6% event


def test_meter_pools_clip_predictions_as_training_did():
    from prernn_cli.analyze import PerformanceMeter
    from prernn_cli.choices import ClipPool
    from prernn_cli.metrics import MetricOptions
    from prernn_cli.spec import Task

    # clip 0 (label 0): class 0 on 3 of 4 steps, class 1 at the last; clip 1 (label 1): class 1 throughout
    first = torch.tensor([[[5.0, 0.0], [5.0, 0.0]], [[0.0, 5.0], [0.0, 5.0]]])
    second = torch.tensor([[[5.0, 0.0], [0.0, 5.0]], [[0.0, 5.0], [0.0, 5.0]]])
    target = {"label": torch.tensor([0, 1])}
    results = {}
    for pool in (ClipPool.MEAN, ClipPool.LAST):
        meter = PerformanceMeter(Task.CLASSIFY, MetricOptions(clip_pool=pool))
        meter.add(first, target, first=True)
        meter.add(second, target, first=False)  # the same clips, continued
        results[pool] = meter.result()
    assert results[ClipPool.MEAN].value == 1.0 and results[ClipPool.LAST].value == 0.5
    assert results[ClipPool.MEAN].clips == 2 and results[ClipPool.MEAN].chance == 0.5


def test_meter_ctc_and_regression():
    from prernn_cli.analyze import PerformanceMeter
    from prernn_cli.spec import Task

    ctc = PerformanceMeter(Task.CTC)
    path = torch.full((1, 5, 3), -5.0)
    for step, symbol in enumerate((1, 0, 2, 2, 0)):  # decodes to (1, 2)
        path[0, step, symbol] = 5.0
    ctc.add(path, {"sequence": torch.tensor([1, 2]), "sequence_lengths": torch.tensor([2])}, first=True)
    ctc.add(path, {"sequence": torch.tensor([2]), "sequence_lengths": torch.tensor([1])}, first=True)
    result = ctc.result()
    assert (result.metric, result.value, result.clips, result.chance) == ("sequence_accuracy", 0.5, 2, 0.5)

    targets = torch.linspace(0, 1, 40).reshape(10, 4, 1)  # 10 clips, 4 steps, one value each
    exact, constant = PerformanceMeter(Task.REGRESS), PerformanceMeter(Task.REGRESS)
    for clip in targets:
        exact.add(clip.unsqueeze(0) + 0.001, {"targets": clip.unsqueeze(0)}, first=True)
        constant.add(torch.full((1, 4, 1), 0.5), {"targets": clip.unsqueeze(0)}, first=True)
    assert exact.result().better_than_chance and exact.result().value > exact.result().chance
    assert constant.result().better_than_chance is False  # the constant itself is no better than the constant


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The same PreGRU-SIH trained (CLI) on 4 clips and on 16 clips of squares moving left or right."""
    from helpers import FAST, converted, make_clip_tree
    from prernn_cli.checkpoint import save_converted

    root = tmp_path_factory.mktemp("trained")
    save_converted(converted(), root / "m.safetensors")
    runs = {}
    for name, per_class, epochs in (("few", 2, 1), ("many", 8, 4)):
        make_clip_tree(root / name, per_class=per_class, num_frames=8)
        args = ["train", root / "m.safetensors", "--data", root / name, "-o", root / f"run_{name}", "--epochs", epochs]
        args += [*FAST, "--batch-size", "4", "--optimizer", "adamw", "--lr", "0.001", "--val-fraction", "0"]
        result = runner.invoke(__import__("prernn_cli.cli", fromlist=["app"]).app, list(map(str, args)))
        assert result.exit_code == 0, result.output
        runs[name] = (root / f"run_{name}" / "last.safetensors", root / name)
    return runs


@pytest.mark.slow
def test_model_no_better_than_chance_gets_no_memory_verdict(trained, tmp_path):
    model, clips = trained["few"]
    result = _run(model, "--data", clips, "-o", tmp_path / "r")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "no better than chance on these 4 clips (accuracy" in text
    assert "the gate reading says nothing about its memory" in text
    assert "long memory" not in text and "barely used" not in text and "decays" not in text
    (analysis,) = json.loads((tmp_path / "r" / "summary.json").read_text())["models"]
    assert analysis["performance"]["better_than_chance"] is False and analysis["memory_reading_holds"] is False
    assert analysis["performance"]["clips"] == 4 and analysis["performance"]["chance"] == 0.5
    assert all("memory" not in layer["text"] and "used" not in layer["text"] for layer in analysis["layer_readings"])
    assert analysis["reading"].startswith("no better than chance on these 4 clips")


@pytest.mark.slow
def test_model_that_learned_keeps_its_verdict_with_its_accuracy(trained, tmp_path):
    model, clips = trained["many"]
    result = _run(model, "--data", clips, "-o", tmp_path / "r", "--json")
    assert result.exit_code == 0, result.output
    (analysis,) = json.loads(result.stdout)["models"]
    performance = analysis["performance"]
    assert performance["metric"] == "accuracy" and performance["clips"] == 16 and performance["value"] >= 13 / 16
    assert performance["better_than_chance"] is True and analysis["memory_reading_holds"] is True
    assert analysis["reading"].startswith(f"accuracy {performance['value']:.3f} on 16 clips (chance 0.500); layer 1")
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["models"][0]["performance"] == performance
    table = _run(model, "--data", clips, "-o", tmp_path / "t")
    assert "Task metric on the same clips" in table.stdout and "holds" in table.stdout
