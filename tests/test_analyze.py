"""`prernn analyze`: gate saturation counts, figures, summary and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from prernn_cli.analyze import (
    HISTOGRAM_BINS,
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
from prernn_cli.spec import CellType, FrameKind, LayerKind, ModelSpec, RecurrentLayerSpec


def _spec(cell: CellType, hidden_sizes, traditional=False) -> ModelSpec:
    layers = tuple(
        RecurrentLayerSpec(name=f"fc{6 + i}", kind=LayerKind.NEW if traditional else LayerKind.FC, hidden_size=h, input_size=8)
        for i, h in enumerate(hidden_sizes)
    )
    return ModelSpec(base_architecture="digit_vgg", layers=layers, cell=cell, traditional=traditional)


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
        cell.bias_ih.copy_(torch.cat([torch.full((hidden,), 15.0), torch.tensor([-15.0, -15.0, 0.0, 0.0]), torch.zeros(hidden)]))
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
            bins = np.minimum(np.floor(values.astype(np.float64) * 10), 9).astype(int)
            expected = np.bincount(bins.reshape(-1), minlength=10)
            # float32 edges vs float64 floor can differ only for values exactly on an edge
            assert np.abs(acc.histogram[index][gate].numpy() - expected).sum() <= 2
            assert acc.histogram[index][gate].sum() == values.size
            assert acc.left[index][gate].sum() <= expected[0]


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
    analysis = summarize(acc, _spec(CellType.LSTM, [4, 4]), clips=1)
    assert [r.verdict for r in analysis.layers] == ["mostly", "rarely"]
    assert analysis.reading.startswith("layer 1 gates are mostly saturated (100% saturated): long memory")
    assert "layer 2 gates rarely saturate (0% saturated): its state is barely used — consider converting one layer only" in analysis.reading
    single = GateAccumulator(CellType.GRU, [4])
    single(0, {"r": torch.tensor([[0.01, 0.5, 0.5, 0.5]]), "z": torch.tensor([[0.05, 0.95, 0.5, 0.5]])})
    (only,) = layer_readings(CellType.GRU, summarize(single, _spec(CellType.GRU, [4]), clips=1).gates)
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
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"frame_{t:04d}.png")
    return root


def test_clip_batches_stream_whole_clips_or_sampled_steps(tmp_path):
    from prernn_cli.analyze import clip_batches, select_clips
    from prernn_cli.spec import InputSpec

    data = _write_clips(tmp_path / "clips", per_class=3, frames=5)
    spec = InputSpec(size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    whole = list(clip_batches(data, spec))
    assert len(whole) == 6 and all(b.shape == (1, 5, 3, 32, 32) for b in whole)
    sampled = list(clip_batches(data, spec, steps=3, batch_size=4))
    assert [b.shape[:2] for b in sampled] == [(4, 3), (2, 3)]
    assert len(list(clip_batches(data, spec, max_clips=2))) == 2
    assert select_clips(list(range(6)), 2) == [0, 3]  # one clip of each class
    snippet = InputSpec(frame_kind=FrameKind.SNIPPET, size=(32, 32), snippet_length=2, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert next(iter(clip_batches(data, snippet))).shape == (1, 2, 3, 2, 32, 32)  # 5 frames -> 2 snippets of 2
    skipped = []
    assert list(clip_batches(data, spec, steps=9, skipped=skipped)) == [] and len(skipped) == 6  # too short
