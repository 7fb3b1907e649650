"""Greedy decoding's per-token choice in MAX (``greedy.py``) against openai-whisper's own loop.

Two levels: one step on the same logits (openai-whisper's logit filters and ``GreedyDecoder``
in PyTorch vs the ``select`` graph), over token histories that reach every timestamp rule; and
whole transcriptions of real speech through both loops on the same MAX model.
"""

import threading
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import replace

import numpy as np
import pytest
import torch
import whisper
from whisper.decoding import DecodingOptions, DecodingTask, GreedyDecoder

from harness.compare.transcripts import transcription_language
from harness.inputs.audio import load_audio
from harness.max_whisper.greedy import GreedyRules
from harness.max_whisper.mel import MaxLogMel
from harness.max_whisper.parts import MaxParts, first_window, language_window
from harness.max_whisper.text_decoder import MaxTextDecoder
from harness.max_whisper.whisper import MaxDecodingTask, MaxWhisper
from harness.openai_whisper import N_FRAMES, N_SAMPLES
from harness.paths import FIXTURES
from harness.pipeline.transcribe import transcribe

OPTIONS = {
    "timestamps": DecodingOptions(fp16=False),  # transcribe's: max_initial_timestamp 1 s
    "no initial limit": DecodingOptions(fp16=False, max_initial_timestamp=None),
    "without timestamps": DecodingOptions(fp16=False, without_timestamps=True),
    "no suppression": DecodingOptions(fp16=False, suppress_blank=False, suppress_tokens=""),
    "no filter at all": DecodingOptions(
        fp16=False, suppress_blank=False, suppress_tokens="", without_timestamps=True
    ),
}
# The same log-probability from log_softmax in PyTorch and in MAX: float32 round-off, measured
# at most 4.8e-7 over these cases (logits of scale ~10); 1e-5 is ~20x that.
LOGPROB_ATOL = 1e-5
# Two windows of LibriVox reading: timestamps, a second window's prompt, segments.
CLIP = FIXTURES / "speech" / "librivox_window.wav"


@pytest.fixture(scope="module")
def model(engine, load_checkpoint):
    checkpoint = load_checkpoint("tiny.en")
    return checkpoint, MaxWhisper(checkpoint, engine)


def histories(task: DecodingTask) -> list[list[int]]:
    """Sampled tokens that reach each of ``ApplyTimestampRules``' branches (and the first step,
    where ``SuppressBlank`` and the initial-timestamp rules apply)."""
    begin, text = task.tokenizer.timestamp_begin, 440
    return [
        [],
        [begin + 3],
        [begin + 3, text],
        [begin + 3, text, begin + 9],
        [begin + 3, text, begin + 9, begin + 9],
        [begin + 3, text, text, begin + 12, begin + 12, text],
        [text, text],
    ]


def reference_choice(task: DecodingTask, logits: torch.Tensor, tokens: torch.Tensor):
    """openai-whisper's filters and greedy update, as its ``_main_loop`` runs them."""
    logits = logits.clone()
    for logit_filter in task.logit_filters:
        logit_filter.apply(logits, tokens)
    sum_logprobs = torch.zeros(tokens.shape[0])
    chosen, _ = GreedyDecoder(0.0, task.tokenizer.eot).update(tokens, logits, sum_logprobs)
    return chosen[:, -1].numpy(), sum_logprobs.numpy()


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_select_chooses_as_openai_whisper_filters_and_greedy_decoder(model, options):
    _, candidate = model
    task = MaxDecodingTask(candidate, options)
    assert task.rules is not None
    decoder: MaxTextDecoder = candidate.text_decoder
    vocab = candidate.dims.n_vocab
    begin = task.tokenizer.timestamp_begin
    suppress = decoder.engine.to_device(task.rules.suppress)
    generator = torch.Generator().manual_seed(0)
    timestamp_won = 0
    for sampled in histories(task):
        tokens = torch.tensor([list(task.initial_tokens) + sampled] * 3)
        logits = 3 * torch.randn(3, vocab, generator=generator)
        # row 1: one text token is the likeliest, but the timestamps' total mass beats it
        logits[1] = torch.randn(vocab, generator=generator)
        logits[1, begin:], logits[1, 1000] = 0.0, 5.0
        logits[2, :begin] += 6  # row 2: a text token beats the timestamps
        expected, expected_logprobs = reference_choice(task, logits, tokens)
        got, logprobs = decoder.select(
            decoder.engine.to_device(logits[:, None, :].numpy()),
            suppress,
            task.rules.bounds(tokens.tolist(), vocab),
            task.rules.timestamp_begin(vocab),
        )
        assert got.tolist() == expected.tolist(), sampled
        np.testing.assert_allclose(logprobs, expected_logprobs, rtol=0, atol=LOGPROB_ATOL)
        timestamp_won += int(expected[1] >= begin > logits[1].argmax())
    if not options.without_timestamps:
        assert timestamp_won > 0  # the timestamp-mass rule changed a choice


def test_beam_search_and_sampling_keep_openai_whisper_loop(model):
    _, candidate = model
    for options in (DecodingOptions(beam_size=2), DecodingOptions(temperature=0.4, best_of=2)):
        assert MaxDecodingTask(candidate, options).rules is None
    assert GreedyRules.of(MaxDecodingTask(candidate, DecodingOptions()), 51864) is not None


def test_transcripts_through_both_loops_are_the_same(model, monkeypatch):
    """The same MAX model, audio file to text, through ``greedy.main_loop`` and through
    openai-whisper's ``_main_loop``: tokens, timestamps and scores."""
    checkpoint, candidate = model
    audio = load_audio(CLIP)
    language = transcription_language(checkpoint)
    selections = []
    select = MaxTextDecoder.select
    monkeypatch.setattr(
        MaxTextDecoder, "select", lambda self, *a: selections.append(1) or select(self, *a)
    )
    fused = transcribe(candidate, audio, language)
    fused_selections = len(selections)
    assert fused_selections >= len(fused.tokens) > 0  # every token was chosen in MAX
    monkeypatch.setattr(MaxDecodingTask, "_main_loop", DecodingTask._main_loop)
    plain = transcribe(candidate, audio, language)
    assert len(selections) == fused_selections  # openai-whisper's loop chose in PyTorch
    assert fused.tokens == plain.tokens
    assert len(fused.segments) == len(plain.segments) > 1
    for ours, theirs in zip(fused.segments, plain.segments, strict=True):
        assert (ours["seek"], ours["start"], ours["end"]) == (
            theirs["seek"],
            theirs["start"],
            theirs["end"],
        )
        assert ours["avg_logprob"] == pytest.approx(theirs["avg_logprob"], abs=LOGPROB_ATOL)
        assert ours["no_speech_prob"] == pytest.approx(theirs["no_speech_prob"], abs=1e-6)
        assert ours["temperature"] == theirs["temperature"] == 0.0


def spy_on_encodings(monkeypatch) -> list[str]:
    """The name of the thread of each of MAX's encodings from now on."""
    threads, encode = [], MaxParts.encode

    def encoding(self, mel):
        threads.append(threading.current_thread().name)
        return encode(self, mel)

    monkeypatch.setattr(MaxParts, "encode", encoding)
    return threads


def spy_on_tasks(monkeypatch) -> list:
    """The encoding each decoding task is given, under way, from now on."""
    given, init = [], MaxDecodingTask.__init__

    def building(self, model, options, encoding=None):
        given.append(encoding)
        init(self, model, options, encoding)

    monkeypatch.setattr(MaxDecodingTask, "__init__", building)
    return given


def test_a_transcription_encodes_its_first_window_before_decoding_asks(model, monkeypatch):
    """``transcribing`` starts the first window's encoding as soon as MAX's log-mel is there,
    on the encoder's thread, and the decoding task waits for that very encoding: one encoding
    for the window, and the same transcript as without the head start."""
    checkpoint, candidate = model
    audio = load_audio(FIXTURES / "speech" / "librivox_0920.wav")  # 6 s: one window
    threads, given = spy_on_encodings(monkeypatch), spy_on_tasks(monkeypatch)
    started, transcription_mel = [], MaxWhisper._transcription_mel

    def head_start(self, *args):
        mel = transcription_mel(self, *args)
        started.append(self._under_way[0][1])
        return mel

    monkeypatch.setattr(MaxWhisper, "_transcription_mel", head_start)
    ahead = transcribe(candidate, audio)
    assert len(started) == 1 and given == started
    assert len(threads) == 1 and threads[0].startswith("max-encoder")
    mel = candidate.log_mel(audio, padding=N_SAMPLES)
    monkeypatch.setattr(MaxWhisper, "_transcription_mel", lambda self, pool, a, p: mel)
    del given[:], threads[:]
    assert transcribe(candidate, audio).tokens == ahead.tokens  # no head start: encoded in decode
    assert len(given) == 1 and len(threads) == 1


def test_a_transcription_started_before_pytorch_takes_its_mel_and_first_window(
    model, engine, monkeypatch
):
    """``MaxParts.start`` (what ``harness.cli`` does before importing PyTorch) computes the
    log-mel and encodes the first window on its own thread; the transcription then computes
    neither again, and its transcript is the one without the head start."""
    checkpoint, candidate = model
    audio = load_audio(FIXTURES / "speech" / "librivox_0920.wav")
    expected = transcribe(candidate, audio)
    threads, given = spy_on_encodings(monkeypatch), spy_on_tasks(monkeypatch)
    mels, log_mel = [], MaxLogMel.__call__
    monkeypatch.setattr(MaxLogMel, "__call__", lambda *a, **k: mels.append(1) or log_mel(*a, **k))
    parts = MaxParts(checkpoint, engine, weights=candidate.weights)
    parts.start(audio)
    started = parts.started
    result = transcribe(MaxWhisper(checkpoint, engine, parts=parts), audio)
    assert result.tokens == expected.tokens
    assert len(mels) == 1 and len(threads) == 1 and threads[0].startswith("max-encoder")
    assert given == [started.encodings[-1][1]] and parts.started is None
    parts.start(audio[: len(audio) // 2])  # other audio: started, and not taken
    other = parts.started
    assert transcribe(MaxWhisper(checkpoint, engine, parts=parts), audio).tokens == result.tokens
    assert given[-1] is not other.encodings[-1][1] and parts.started is None and len(mels) == 3


def test_language_identification_takes_the_first_windows_encoding_under_way(model, monkeypatch):
    """openai-whisper identifies the language on the first window before decoding it: the
    model's ``encoder`` gives the encoding the transcription started for that window, and
    encodes any other window itself."""
    checkpoint, candidate = model
    window = np.random.default_rng(0).standard_normal((1, 80, 3000)).astype(np.float32)
    under_way = Future()
    under_way.set_result(np.full((1, 1500, 384), 7.0, np.float32))
    monkeypatch.setattr(candidate, "_under_way", [(window, under_way)])
    threads = spy_on_encodings(monkeypatch)
    assert np.array_equal(candidate.encoder(torch.from_numpy(window)).numpy(), under_way.result())
    assert threads == []
    other = candidate.encoder(torch.from_numpy(window[:, :, ::-1].copy()))
    assert len(threads) == 1 and not np.array_equal(other.numpy(), under_way.result())


def test_a_start_encodes_the_window_transcribe_identifies_the_language_on_first(model, engine):
    """``MaxParts.start(identify_language=True)``: that window is ``transcribe``'s own
    (``pad_or_trim`` of its mel, batched as ``detect_language`` batches it), encoded before the
    first decoded window, and its encoding is the encoder's."""
    checkpoint, candidate = model
    audio = load_audio(FIXTURES / "speech" / "librivox_0920.wav")
    parts = MaxParts(checkpoint, engine)
    parts.start(audio, identify_language=True)
    started, mel = parts.started, parts.started.mel.result()
    assert [window for window, _ in started.encodings] == [language_window, first_window]
    theirs = whisper.pad_or_trim(torch.from_numpy(mel), N_FRAMES)[None]
    assert np.array_equal(language_window(mel), theirs.numpy())
    features = started.encodings[0][1].result()
    assert np.array_equal(features, candidate.parts.encode(language_window(mel)))


def test_encoder_runs_beside_task_setup_with_the_same_result(model, monkeypatch):
    """``MaxWhisper.decode`` starts the encoder on a thread of its own before openai-whisper
    builds the task (tokenizer, suppression list), and the task waits for it: same result as
    the encoder run inside the task. Features given, or float16 asked for: no early encoding."""
    checkpoint, candidate = model
    mel = candidate.log_mel_spectrogram(np.zeros(16000 * 30, np.float32))[None]
    threads, given = spy_on_encodings(monkeypatch), spy_on_tasks(monkeypatch)
    options = DecodingOptions(fp16=False, language="en", without_timestamps=True)
    ahead = candidate.decode(mel, options)
    assert len(threads) == 1 and threads[0].startswith("max-encoder") and given[0] is not None
    monkeypatch.setattr(MaxWhisper, "_encoding_ahead", lambda self, mel, options: nullcontext())
    inside = candidate.decode(mel, options)
    assert threads[1] == threading.main_thread().name and given[1] is None
    assert ahead[0].tokens == inside[0].tokens and ahead[0].avg_logprob == inside[0].avg_logprob
    features = candidate.encoder(mel)
    del threads[:]
    candidate.decode(features, options)
    assert threads == []  # features given: nothing to encode
    with candidate._encoding_ahead(mel, replace(options, fp16=True)) as early:
        assert early is None
