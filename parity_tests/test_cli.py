"""The command line: a real report on synthetic:tiny, and one-line errors for bad input."""

import json
import math
import subprocess
import sys

import pytest

from harness.child_process import child_env
from harness.paths import REPO
from harness.report.files import write_json


def harness(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "tiny"
    result = harness("report", "--model", "synthetic:tiny", "--out", str(out), "--speed-runs", "2")
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.slow  # one whole report, speed runs included
def test_report_writes_the_parity_document(report_dir):
    document = json.loads((report_dir / "parity.json").read_text())
    assert document["schema"] == 1
    assert document["model"]["weights"] == "synthetic"
    assert document["model"]["dims"]["n_audio_state"] == 384
    assert (document["device"], document["dtype"]) == ("cpu", "float32")
    assert set(document["versions"]) >= {"max", "torch", "whisper"}
    stages = [s["stage"] for s in document["encoder"]["stages"]]
    assert stages == ["conv1", "conv2", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "ln_post"]
    metrics = {"cosine", "min_frame_cosine", "rel_l2", "max_abs", "snr_db"}
    assert set(document["encoder"]["stages"][0]["isolated"]) == metrics
    assert set(document["encoder"]["fused"]) == metrics
    assert document["encoder"]["first_divergent_stage"] is None


@pytest.mark.slow  # one whole report, speed runs included
def test_report_has_a_noise_floor_and_a_verdict_for_every_stage(report_dir):
    """A passing run: every stage's arbiter finds both sides within tolerance of float64."""
    document = json.loads((report_dir / "parity.json").read_text())
    stages = document["encoder"]["stages"] + document["decoder"]["teacher_forced"]["stages"]
    floors = document["noise_floor"]
    assert list(floors) == ["mel", *[s["stage"] for s in stages]]
    for verdict in [document["mel_arbiter"], *[s["arbiter"] for s in stages]]:
        assert verdict["closer"] == "tie", verdict
        assert 0 < verdict["torch_vs_f64_rel_l2"] == floors[verdict["stage"]]["rel_l2"]
    text = (report_dir / "report.md").read_text()
    assert "## Noise floor and float64 arbiter" in text and "Float64 arbiter on" not in text


@pytest.mark.slow  # one whole report, speed runs included
def test_report_markdown_says_synthetic_loudly(report_dir):
    text = (report_dir / "report.md").read_text()
    assert "SYNTHETIC WEIGHTS" in text
    assert "| ln_post |" in text


@pytest.mark.parametrize(("command", "output"), [("report", "--out"), ("faults", "--json")])
@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("/nonexistent/model.pt", "/nonexistent/model.pt: checkpoint file not found"),
        ("synthetic:enormous", "unknown model 'enormous'"),
        ("fixtures/audio/short.wav", "fixtures/audio/short.wav: not a readable checkpoint"),
    ],
)
def test_bad_model_is_one_line_and_writes_nothing(tmp_path, command, output, model, message):
    out = tmp_path / "out"
    result = harness(command, "--model", model, output, str(out))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow  # one whole report, speed runs included
def test_report_transcripts_are_token_identical_and_the_verdict_passes(report_dir):
    document = json.loads((report_dir / "parity.json").read_text())
    clips = {t["audio"]: t["tokens_equal"] for t in document["transcripts"]}
    assert clips == {
        "short.wav": True,
        "sentences.wav": True,
        "long.wav": True,
        "silence.wav": True,
    }
    assert document["decoder"]["teacher_forced"]["top1_agreement"] == 1.0
    assert document["verdict"] == {"pass": True, "failures": []}
    for name in ("report.md", "report.html", "summary.csv", "encoder_stages.png"):
        assert (report_dir / name).stat().st_size > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--only", "no_such_fault"), "unknown fault(s) no_such_fault; known: none, "),
        (("--json", "/nonexistent/faults.json"), "/nonexistent: no such folder for --json"),
    ],
)
def test_faults_refuses_bad_arguments_before_compiling(args, message):
    result = harness("faults", *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert message in result.stderr and "Traceback" not in result.stderr


def test_json_is_replaced_whole_or_not_at_all(tmp_path):
    path = tmp_path / "faults.json"
    write_json({"faults": [{"name": "none", "snr_db": math.inf}]}, path)
    assert json.loads(path.read_text()) == {"faults": [{"name": "none", "snr_db": None}]}
    with pytest.raises(TypeError):
        write_json({"faults": [object()]}, path)  # not JSON: the old file stays
    assert json.loads(path.read_text())["faults"][0]["name"] == "none"
    assert [p.name for p in tmp_path.iterdir()] == ["faults.json"]


@pytest.mark.slow  # one whole report, speed runs included
def test_report_times_pytorch_max_and_ctranslate2_side_by_side(report_dir):
    speed = json.loads((report_dir / "parity.json").read_text())["speed"]
    assert speed["threads"] >= 1 and speed["decode_tokens"] > 0
    assert speed["machine"]["cpus"] >= 1 and speed["machine"]["cpu"]
    # each engine in a process of its own, timed from one that had not run MAX (whose idle
    # thread burns ~16% of a core)
    assert 0 <= speed["idle_cpu_share"] < 0.05
    assert (
        speed["timing_process"] == "each engine in a process of its own, stopped between its turns"
    )
    engines = ["torch", "max", "max-float16", "ct2-float32", "ct2-int8"]
    assert list(speed["engines"]) == engines
    in_process = ("encoder_ms", "decode_ms_per_token", "end_to_end_rtf", "batched_rtf")
    for measure in (*in_process, "first_transcript_s"):
        timed = speed[measure]
        assert list(timed["median"]) == engines
        for engine in engines:
            runs = timed["runs"][engine]
            assert len(runs) == speed["runs"]
            assert min(runs) <= timed["median"][engine] <= max(runs)
        for peer in ("torch", "ct2-float32", "ct2-int8"):
            ratio = timed["median"][peer] / timed["median"]["max"]
            assert timed["speedup"]["max"][peer] == pytest.approx(ratio)
            peer_runs, max_runs = timed["runs"][peer], timed["runs"]["max"]
            rounds = [a / b for a, b in zip(peer_runs, max_runs, strict=True)]
            assert timed["speedup_runs"]["max"][peer] == pytest.approx(rounds)
    assert speed["compile_s"]["cold"] is None and speed["compile_s"]["warm"] > 0
    assert all(speed["load_s"][engine] > 0 for engine in ["torch", "max", *engines[3:]])
    work = speed["end_to_end_work"]
    assert list(work) == engines and all(w["windows"] >= 1 for w in work.values())
    assert work["max"] == work["torch"]  # same windowing, token-equal transcripts
    batched = speed["batched"]
    assert list(batched["engines"]) == engines and len(batched["chunks_s"]) == 4
    assert batched["engines"]["max"]["tokens_equal_to_torch"]  # same chunks, same algorithm
    text = (report_dir / "report.md").read_text()
    assert "## Speed" in text and "decoding (ms per token)" in text
    assert f"Machine: {speed['machine']['cpu']}, " in text
    assert "While idle after the timings, the timing process burnt " in text
    assert "Timed: each engine in a process of its own, stopped between its turns." in text
    assert "End-to-end work (30 s windows encoded, tokens kept): PyTorch float32 " in text
    assert "| MAX float32, encoder, 30 s window (ms) |" in text
    assert "long audio, chunks in one batch (real-time factor)" in text
    assert "Long audio: 9 fixture clips end to end" in text


@pytest.mark.slow  # one whole report, speed runs included
def test_report_compares_every_engine_with_pytorch_as_it_does_max(report_dir):
    document = json.loads((report_dir / "parity.json").read_text())
    peers = document["peers"]
    assert list(peers["labels"]) == ["max", "max-float16", "ct2-float32", "ct2-int8"]
    steps = document["decoder"]["teacher_forced"]["steps"] - peers["teacher_forced_from_step"]
    assert peers["max"]["teacher_forced"]["steps"] == steps
    for name in ["max-float16", "ct2-float32", "ct2-int8"]:
        peer = peers[name]
        assert peer["teacher_forced"]["steps"] == steps
        assert len(peer["transcripts"]) == peer["clips"] == len(document["transcripts"])
    # float32 CTranslate2 runs the very same weights: float32 round-off from PyTorch
    assert peers["ct2-float32"]["encoder"]["rel_l2"] < 1e-5
    assert peers["ct2-float32"]["teacher_forced"]["top1_agreement"] == 1.0
    # int8 weights are not the checkpoint's: their error is orders of magnitude larger
    assert peers["ct2-int8"]["encoder"]["rel_l2"] > 100 * peers["ct2-float32"]["encoder"]["rel_l2"]
    text = (report_dir / "report.md").read_text()
    assert "## Drift of every engine" in text and "| CTranslate2 int8 |" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--weights", "q9"), "--weights: unknown weights mode 'q9'"),
        (("--weights", "q4_0", "--dtype", "bfloat16"), "run on the CPU with --dtype float32"),
    ],
)
def test_report_refuses_a_bad_weights_mode_before_any_work(args, message):
    result = harness("report", *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert message in result.stderr and "Traceback" not in result.stderr


class _Built(Exception):
    """Raised by a stand-in ``report.build``: the report's arguments are known, nothing runs."""


@pytest.mark.parametrize(
    ("model", "modes"), [("tiny.en", ["q6_k_top"]), ("synthetic:tiny", ["float16"])]
)
def test_a_report_measures_the_fastest_mode_by_default_on_pretrained_weights(
    monkeypatch, tmp_path, model, modes
):
    """q6_k_top's limits were measured on pretrained weights; random ones flip tokens under any
    rounding, so a synthetic report measures float16 (``cli.DEFAULT_WEIGHTS``)."""
    from harness import cli

    def build(*args, weights, **kwargs):
        raise _Built(list(weights))

    monkeypatch.setattr(cli.report, "build", build)
    with pytest.raises(_Built) as built:
        cli.main(["report", "--model", model, "--out", str(tmp_path / "r"), "--speed-runs", "0"])
    assert built.value.args == (modes,)
    assert not (tmp_path / "r").exists()
