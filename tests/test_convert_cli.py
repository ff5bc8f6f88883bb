"""`prernn convert` end to end on the shipped sample checkpoints."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from helpers import SAMPLES
from prernn_cli.checkpoint import load_converted
from prernn_cli.cli import app
from prernn_cli.spec import CellType, Design, HeadKind

runner = CliRunner()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _run(*args: str):
    return runner.invoke(app, [str(arg) for arg in args])


def test_convert_gru_sih_writes_a_loadable_model(tmp_path):
    out = tmp_path / "pregru.safetensors"
    result = _run("convert", SAMPLES / "digit_vgg.pt", "--layer", "fc6", "--cell", "gru", "--sih", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["design"] == "sih" and summary["cell"] == "gru"
    assert summary["new_params"] == 3 * 256 * 256  # only W_hr, W_hz, W_hh are new
    assert summary["table3_ratio"] == pytest.approx(3 * 256**2 / (2 * 1024 * 256 + 3 * 256**2))
    model = load_converted(out)
    assert model.spec.cell is CellType.GRU and model.spec.sih and model.spec.design is Design.SIH
    base = torch.load(SAMPLES / "digit_vgg.pt", weights_only=True)
    assert torch.equal(model.layers[0].weight_ih, base["classifier.0.weight"])
    assert list(tmp_path.iterdir()) == [out]


def test_convert_prints_what_changed(tmp_path):
    result = _run(
        "convert",
        SAMPLES / "digit_resnet.pt",
        "--layer",
        "res5c",
        "--cell",
        "lstm",
        "--num-classes",
        "2",
        "-o",
        tmp_path / "m.safetensors",
    )
    assert result.exit_code == 0, result.output
    assert "PreLSTM" in result.stdout and "layer3.1.conv2" in result.stdout and "Table 3" in result.stdout
    model = load_converted(tmp_path / "m.safetensors")
    assert model.spec.head is HeadKind.CLASSIFY and model.spec.outputs == 2
    assert model(torch.randn(1, 2, 3, 32, 32))[0].shape == (1, 2, 2)


def test_convert_traditional_baseline(tmp_path):
    out = tmp_path / "tra.safetensors"
    result = _run(
        "convert", SAMPLES / "digit_c3d.pt", "--layer", "fc6,fc7", "--cell", "gru", "--traditional", "-o", out, "--json"
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["design"] == "traditional"
    model = load_converted(out)
    assert model.spec.traditional and model.layers[0].input_size == 256
    assert model(torch.randn(1, 2, 3, 4, 32, 32))[0].shape == (1, 2, 10)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--layer", "fc9", "--cell", "gru"], "unknown layer 'fc9'"),
        (["--layer", "classifier.6", "--cell", "gru"], "output layer"),
        (["--layer", "features.0", "--cell", "gru"], "before global average pooling"),
        (["--layer", "fc6", "--cell", "vrnn", "--sih"], "SIH"),
        (
            ["--layer", "fc6", "--cell", "gru", "--num-classes", "0"],
            "'--num-classes': Input should be greater than or equal to 1",
        ),
        (["--layer", "fc6,fc6", "--cell", "gru"], "named twice"),
        (["--layer", "fc6", "--cell", "gru", "--sih", "--traditional"], "exclude each other"),
    ],
)
def test_bad_requests_exit_2_with_one_line(tmp_path, args, message):
    out = tmp_path / "m.safetensors"
    result = _run("convert", SAMPLES / "digit_vgg.pt", *args, "-o", out)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 or "error:" in result.stderr.splitlines()[0]
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_unknown_cell_is_a_usage_error(tmp_path):
    out = tmp_path / "m.safetensors"
    result = runner.invoke(
        app,
        ["convert", str(SAMPLES / "digit_vgg.pt"), "--layer", "fc6", "--cell", "rnn", "-o", str(out)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert [line for line in result.stderr.splitlines() if "'rnn' is not one of 'vrnn', 'lstm', 'gru'" in line], (
        result.stderr
    )
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_paths(tmp_path):
    result = _run("convert", SAMPLES / "digit_vgg.pt", "--layer", "fc6", "--cell", "gru", "-o", tmp_path)
    assert result.exit_code == 2 and "is a directory" in result.stderr
    result = _run(
        "convert",
        SAMPLES / "digit_vgg.pt",
        "--layer",
        "fc6",
        "--cell",
        "gru",
        "-o",
        tmp_path / "missing" / "m.safetensors",
    )
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_side_branch_conv_is_not_convertible_with_reason(tmp_path):
    result = _run(
        "convert",
        SAMPLES / "digit_resnet.pt",
        "--layer",
        "layer3.0.downsample.0",
        "--cell",
        "gru",
        "-o",
        tmp_path / "m.safetensors",
    )
    assert result.exit_code == 2
    assert "cannot be converted" in result.stderr and "res5c" in result.stderr


def test_convert_is_deterministic_for_a_seed(tmp_path):
    files = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        out = tmp_path / f"{name}.safetensors"
        torch.manual_seed(len(name) * 100 + seed)  # the global RNG must not matter
        result = _run(
            "convert",
            SAMPLES / "digit_vgg.pt",
            "--layer",
            "fc6",
            "--cell",
            "lstm",
            "--num-classes",
            "2",
            "--seed",
            seed,
            "-o",
            out,
        )
        assert result.exit_code == 0, result.output
        with safe_open(str(out), "pt") as handle:  # contents, not bytes: the header's key order may vary
            files.append((handle.metadata(), {key: handle.get_tensor(key) for key in handle.keys()}))
    (meta_a, a), (meta_b, b), (meta_c, c) = files
    assert meta_a == meta_b == meta_c
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert not torch.equal(a["layers.0.weight_hh"], c["layers.0.weight_hh"])
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
