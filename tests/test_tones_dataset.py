"""The `tones` builder: split sizes, format, determinism, loudness and equal-tempered pitches."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments.datasets import tones

SMALL = {"train": 5, "validation": 2, "test": 3}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(tones, "SPLITS", SMALL)  # the real sizes take ~10 s to build
    b = tfds.builder("tones", data_dir=str(tmp_path_factory.mktemp("tfds")))
    b.download_and_prepare()
  return b


def _split(b, split):
  return tfds.as_numpy(b.as_dataset(split=split, batch_size=-1))


def test_splits_features_and_sizes(built):
  assert tones.SPLITS == {"train": 1_000, "validation": 100, "test": 100}
  assert {s: built.info.splits[s].num_examples for s in SMALL} == SMALL
  assert built.info.supervised_keys == ("audio", "label")
  assert built.info.features["label"].names == ["flute", "clarinet", "strings", "plucked"]
  assert built.info.features["audio"].sample_rate == 16_000
  for split, n in SMALL.items():
    data = _split(built, split)
    assert data["audio"].shape == (n, 16_000) and data["audio"].dtype == np.int16
    assert set(data["label"]) <= {0, 1, 2, 3}


def test_stored_clips_are_the_seeded_clips(built):
  for split in SMALL:
    data = _split(built, split)
    for i, (audio, label) in enumerate(zip(data["audio"], data["label"])):
      again, again_label, _ = tones.clip(split, i)
      np.testing.assert_array_equal(audio, tones.to_pcm(again))
      assert label == again_label
  # Each split has its own seed; two calls give the same clip.
  assert not np.array_equal(tones.clip("train", 0)[0], tones.clip("test", 0)[0])
  np.testing.assert_array_equal(tones.clip("validation", 1)[0], tones.clip("validation", 1)[0])


def test_clips_are_loud_music_over_quiet_noise():
  for i in range(8):
    audio, label, events = tones.clip("train", i)
    assert 0.5 - 0.01 <= np.abs(audio).max() <= 0.8 + 0.01
    rms = np.sqrt(np.mean(audio.astype(np.float64)**2))
    assert rms > 20 * tones.NOISE_STD  # audible: far above the background noise
    assert 1 <= len(events) <= 4 and 0 <= label < 4
    for e in events:
      assert all(tones.LOWEST <= p <= tones.HIGHEST for p in e.pitches) and 1 <= len(e.pitches) <= 3
    # Between the last note's end (plus release) and the clip's end there is only noise, if any is left.
    last = events[-1]
    tail_start = int((last.onset + last.duration + tones.INSTRUMENTS[tones.NAMES[label]].release) * 16_000) + 1
    if tail_start < 15_000:
      assert np.std(audio[tail_start:]) == pytest.approx(tones.NOISE_STD, rel=0.2)


def _peak_hz(audio: np.ndarray) -> float:
  spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
  return float(np.argmax(spectrum) * 16_000 / len(audio))


@pytest.mark.parametrize("instrument", ["flute", "clarinet", "strings", "plucked"])
def test_a_single_note_peaks_at_its_equal_tempered_pitch(instrument):
  # A3 = 220 Hz, A4 = 440 Hz, C5 = 523.25 Hz: every preset's strongest partial is its fundamental.
  for pitch in (57, 69, 72):
    audio = tones.render([tones.Event(0.05, 0.7, (pitch,))], instrument)
    peak = _peak_hz(audio)
    assert abs(peak - tones.midi_to_hz(pitch)) < 0.01 * tones.midi_to_hz(pitch), (instrument, pitch, peak)
    assert abs(12 * np.log2(peak / 440) + 69 - pitch) < 0.2


def test_a_sampled_single_note_clip_peaks_at_a_harmonic_of_its_pitch():
  found = 0
  for i in range(200):
    audio, label, events = tones.clip("train", i)
    if len(events) == 1 and len(events[0].pitches) == 1:
      f0 = tones.midi_to_hz(events[0].pitches[0])
      ratio = _peak_hz(audio) / f0
      assert round(ratio) >= 1 and abs(ratio - round(ratio)) < 0.01 * round(ratio), (i, label, ratio)
      found += 1
      if found == 3:
        break
  assert found == 3
