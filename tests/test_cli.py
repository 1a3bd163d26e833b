import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from cli.main import main
from model import artifact as artifact_io
from model.preprocessing import sliding_windows
from model.scoring import Scorer
from tests.synthetic import CHANNELS, normal_values, tiny_model, write_csv


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    artifact_io.save(tiny_model().artifact, path)
    return path


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_writes_model_report_and_summary(tmp_path, capsys):
    data = write_csv(tmp_path / "normal.csv", normal_values(300), delimiter=";")
    out = tmp_path / "m.pt"
    code, stdout, _ = run_cli(
        capsys, "train", data, "--out", out, "--window", 10, "--epochs", 2, "--quiet"
    )
    assert code == 0
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"
    assert "windows=" in stdout and "threshold=" in stdout
    assert artifact_io.load(out).summary()["input_dim"] == 10 * len(CHANNELS)


def test_window_125_on_8_channels_is_the_specified_1000_input_model(tmp_path, capsys):
    values = np.tile(normal_values(700), (1, 2))  # 124 windows purged at each of two cuts
    data = write_csv(tmp_path / "wide.csv", values, [f"c{i}" for i in range(8)])
    out = tmp_path / "m.pt"
    code, _, _ = run_cli(
        capsys, "train", data, "--out", out, "--window", 125, "--epochs", 1, "--quiet"
    )
    assert code == 0
    code, stdout, _ = run_cli(capsys, "inspect", out, "--json")
    info = json.loads(stdout)
    assert (info["input_dim"], info["parameters"], info["window"]) == (1000, 1_058_824, 125)
    assert {"threshold", "version", "channels"} <= info.keys()


def test_score_writes_one_row_per_window_from_row(tmp_path, capsys, model_path):
    values = normal_values(50, seed=9)
    data = write_csv(tmp_path / "d.csv", values)
    out = tmp_path / "s.csv"
    code, _, _ = run_cli(
        capsys, "score", data, "--model", model_path, "--out", out, "--from-row", 20
    )
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["end_row", "timestamp", "score", "threshold", "anomaly"]
    assert [int(r["end_row"]) for r in rows] == list(range(20, 50))
    scorer = Scorer.load(model_path)
    expected = scorer.score(sliding_windows(values, scorer.window)).score[20 - scorer.window + 1 :]
    assert np.allclose([float(r["score"]) for r in rows], expected, rtol=1e-5)


def test_inspect_prints_a_readable_summary(capsys, model_path):
    code, stdout, _ = run_cli(capsys, "inspect", model_path)
    assert code == 0 and "version" in stdout and "flow, pressure" in stdout


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "no such file"),
        ("short", "rows, the window needs"),
        ("text", "is not numeric"),
        ("channels", "differ from the model's"),
        ("model", "no such model file"),
    ],
)
def test_user_mistakes_are_one_line_and_nonzero(tmp_path, capsys, model_path, case, message):
    data = tmp_path / "d.csv"
    model = model_path
    if case == "short":
        write_csv(data, normal_values(5))
    elif case == "text":
        lines = write_csv(data, normal_values(30)).read_text().splitlines()
        cells = lines[5].split(",")
        cells[2] = "open"  # a status column left in by mistake
        lines[5] = ",".join(cells)
        data.write_text("\n".join(lines))
    elif case == "channels":
        write_csv(data, normal_values(30), ["a", "b", "c", "d"])
    elif case == "model":
        write_csv(data, normal_values(30))
        model = tmp_path / "absent.pt"
    code, _, err = run_cli(capsys, "score", data, "--model", model, "--out", tmp_path / "s.csv")
    assert code != 0
    assert message in err and len(err.strip().splitlines()) == 1


def test_console_script_reports_errors_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cli", "inspect", str(tmp_path / "nope.pt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("faultwatch: error:") and "Traceback" not in result.stderr


def test_kernel_longer_than_the_window_is_refused_at_training(tmp_path, capsys):
    data = write_csv(tmp_path / "normal.csv", normal_values(100))
    code, _, err = run_cli(
        capsys, "train", data, "--out", tmp_path / "m.pt", "--window", 10, "--kernel", 11
    )
    assert code == 1 and "denoising kernel 11 must be 1 to the window (10)" in err


def test_inspect_shows_no_terminal_escape_codes_from_the_file(tmp_path, capsys):
    from dataclasses import replace

    hostile = replace(tiny_model().artifact, training={"note": "\x1b[2J\x1b]0;owned\x07"})
    path = tmp_path / "m.pt"
    artifact_io.save(hostile, path)
    code, out, _ = run_cli(capsys, "inspect", path)
    assert code == 0 and "\x1b" not in out and "\\x1b[2J" in out


DESIGN_INSPECT_KEYS = {
    "parameters",
    "input_dim",
    "window",
    "channels",
    "threshold",
    "version",
    "architecture",
    "layers",
    "detectors",
    "machines",
}


def test_train_takes_the_architecture_detectors_and_machines(tmp_path, capsys):
    data = write_csv(tmp_path / "normal.csv", normal_values(200))
    out = tmp_path / "m.fwm"
    code, _, err = run_cli(
        capsys,
        *("train", data, "--out", out, "--window", 10, "--epochs", 1, "--quiet"),
        *("--architecture", "attention", "--heads", 2, "--bottleneck", 8),
        *("--detectors", "level,autoencoder", "--machines", "pump-*, p-1?"),
    )
    assert code == 0, err
    code, stdout, _ = run_cli(capsys, "inspect", out, "--json")
    info = json.loads(stdout)
    assert DESIGN_INSPECT_KEYS <= info.keys()
    assert info["architecture"] == "attention"
    assert (info["network"]["heads"], info["network"]["bottleneck"]) == (2, 8)
    assert [d["name"] for d in info["detectors"]] == ["level", "autoencoder"]
    assert info["machines"] == ["pump-*", "p-1?"]
    assert sum(layer["parameters"] for layer in info["layers"]) == info["parameters"]
    code, stdout, _ = run_cli(capsys, "inspect", out)
    assert "pump-*, p-1?" in stdout and "level (reference" in stdout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--detectors", "autoencoder,magic"), "unknown detector 'magic'"),
        (("--machines", " , "), "--machines: a machine pattern is empty"),
        (("--architecture", "conv", "--window", "10"), None),
        (("--architecture", "attention", "--heads", "3"), "3 heads do not divide d_model 32"),
        (("--heads", "2"), "dense has no hyper-parameter 'heads'"),
    ],
)
def test_train_refuses_bad_model_choices_with_one_line(tmp_path, capsys, flags, message):
    data = write_csv(tmp_path / "normal.csv", normal_values(100))
    argv = ["train", data, "--out", tmp_path / "m.fwm", "--epochs", "1", "--quiet", *flags]
    code, _, err = run_cli(capsys, *argv)
    if message is None:  # the control: a valid choice trains
        assert code == 0, err
        return
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1


def test_cells_beyond_float_range_are_missing_values(tmp_path, capsys):
    data = write_csv(tmp_path / "normal.csv", normal_values(600))
    lines = data.read_text().splitlines()
    for row, cell in ((101, "inf"), (201, "1e400"), (301, "-Infinity")):
        cells = lines[row].split(",")
        cells[2] = cell
        lines[row] = ",".join(cells)
    data.write_text("\n".join(lines) + "\n")
    code, stdout, err = run_cli(
        capsys,
        "train",
        data,
        "--out",
        tmp_path / "m.fwm",
        "--window",
        10,
        "--epochs",
        1,
        "--quiet",
    )
    assert code == 0, err
    assert "gaps_filled=3" in stdout  # each one a one-sample gap, interpolated


def test_score_skips_and_counts_windows_the_worker_would_dead_letter(tmp_path, capsys, model_path):
    values = normal_values(80, seed=9)
    values[40, 1] = 1e300  # a number, yet far beyond anything the model can score
    data = write_csv(tmp_path / "d.csv", values)
    out = tmp_path / "s.csv"
    code, stdout, _ = run_cli(capsys, "score", data, "--model", model_path, "--out", out)
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    window = Scorer.load(model_path).window
    assert len(rows) == 80 - window + 1 - window  # the windows holding row 40 are left out
    assert all(np.isfinite(float(r["score"])) for r in rows)
    assert {int(r["end_row"]) for r in rows}.isdisjoint(range(40, 40 + window))
    assert f"{window} windows skipped, values beyond the model's range" in stdout


def test_train_on_values_too_large_to_standardise_is_one_line(tmp_path, capsys):
    values = normal_values(300)
    values[100:120, 0] = 1e300
    data = write_csv(tmp_path / "huge.csv", values)
    code, stdout, err = run_cli(capsys, "train", data, "--out", tmp_path / "m.fwm", "--quiet")
    assert code == 1 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and "too large to standardise" in err
    assert not (tmp_path / "m.fwm").exists()


def test_score_writes_the_episodes_the_worker_would_publish(
    tmp_path, capsys, model_path, monkeypatch
):
    monkeypatch.setenv("FAULTWATCH_EPISODE_CLEAR_SECONDS", "30")  # the worker's setting
    monkeypatch.setenv("FAULTWATCH_EPISODE_OPEN_SECONDS", "20")  # the rows below assume 20 s
    values = normal_values(200, seed=4)
    values[60:100] += 25.0  # a fault, over by row 100 (a row a second, window 10)
    values[170:] += 25.0  # another, still on at the end
    data = write_csv(tmp_path / "press-9.csv", values)
    episodes = tmp_path / "e.csv"
    code, stdout, _ = run_cli(
        capsys, "score", data, "--model", model_path, "--out", tmp_path / "s.csv",
        "--episodes", episodes,
    )  # fmt: skip
    assert code == 0 and "2 episodes (1 open at the end)" in stdout
    with episodes.open() as f:
        rows = list(csv.DictReader(f))
    required = "opened_row,closed_row,started_at,opened_at,ended_at,peak_score,close_reason"
    assert set(required.split(",")) <= set(rows[0])
    first, second = rows
    assert first["machine_id"] == "press-9" and first["close_reason"] == "cleared"
    # opens 20 s after its first anomalous window (row 60); closes 30 s after row 109's window,
    # the first without the fault
    assert (int(first["opened_row"]), int(first["closed_row"])) == (80, 139)
    assert first["started_at"].endswith(":01:00Z") and first["ended_at"].endswith(":01:49Z")
    assert int(first["windows"]) == 49  # windows ending at rows 60-108
    assert int(second["opened_row"]) == 190
    assert second["closed_row"] == second["ended_at"] == second["close_reason"] == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "either DATA.csv files or --from-topic"),
        (["DATA", "--from-topic", "t"], "either DATA.csv files or --from-topic"),
        (["DATA", "--since", "2h"], "--since needs --from-topic"),
        (["DATA", "--exclude-episodes"], "--exclude-episodes needs --from-topic"),
    ],
)
def test_train_takes_files_or_a_topic_and_says_which_flag_is_out_of_place(
    tmp_path, capsys, args, message
):
    data = write_csv(tmp_path / "d.csv", normal_values(60))
    args = [str(data) if a == "DATA" else a for a in args]
    code, _, err = run_cli(capsys, "train", *args, "--out", tmp_path / "m.fwm", "--quiet")
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--from-topic", "t", "--out", "m.fwm"],
        ["replay", "--topic", "t", "--from-topic", "s"],
    ],
    ids=["train", "replay"],
)
@pytest.mark.parametrize("flag", ["--from-offset", "--to-offset"])
def test_a_negative_offset_is_a_usage_error_before_any_broker_is_asked(capsys, command, flag):
    with pytest.raises(SystemExit) as stopped:
        main([*command, flag, "-1"])
    assert stopped.value.code == 2 and "must be an offset, 0 or more" in capsys.readouterr().err


def test_simulate_plant_writes_weeks_with_a_labelled_fault(tmp_path, capsys):
    from model.recording import read_recording

    out = tmp_path / "plant.csv"
    assert main(["simulate", "--plant", "stuck_flow", "--days", "10", "--out", str(out)]) == 0
    assert "stuck_flow labelled rows 13680-14039" in capsys.readouterr().out
    recording = read_recording(out, label_column="anomaly")
    assert len(recording) == 14400 and recording.interval() == 60.0
    assert int(recording.labels.sum()) == 360
