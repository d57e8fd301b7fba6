"""`tones`: synthetic instrument-like music, 1 s mono clips at 16 kHz, generated offline (a WaveNet toy).

Each clip is played by one of four instrument presets (its label) and holds a sequence of
1-4 events, one after the other with random onsets and lengths, each a single note or a
chord (a major or minor triad, a fifth, a major third or an octave). Pitches are
equal-tempered, MIDI 48-84 (C3 = 130.8 Hz to C6 = 1046.5 Hz, A4 = 440 Hz). A note is a sum
of harmonics k * f0 (those below 7.2 kHz, short of the 8 kHz Nyquist) with the preset's
amplitudes, shaped by an ADSR envelope (attack, decay, sustain level, release after the
note ends), with a vibrato that fades in after the attack:

- flute: a strong fundamental and weak 2nd-5th harmonics; soft 60 ms attack; 5 Hz vibrato, 0.4%.
- clarinet: mostly odd harmonics (a hollow, square-wave-like tone); 30 ms attack; light vibrato.
- strings: all harmonics at 1/k (sawtooth-like, bright); slow 120 ms attack; 6 Hz vibrato, 0.5%.
- plucked: harmonics at 1/k^1.5, 5 ms attack, no sustain: the note dies away over about a second,
  the higher harmonics faster (a guitar- or piano-like decay); no vibrato.

Event velocities vary (0.5-1), the notes of a chord share the loudness of one. Each clip is
scaled to a random peak amplitude in [0.5, 0.8], then white noise of standard deviation
0.002 (about -54 dBFS) is added, and stored as 16-bit PCM. Every clip comes from its own
seed (the split's and its index), so the data never changes and any prefix of a split is
the same whatever the split's size: `tfds.load("tones")`, with `supervised_keys` (audio, label).
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

SAMPLE_RATE = 16_000
CLIP_SAMPLES = 16_000  # 1 s
SPLITS = {"train": 1_000, "validation": 100, "test": 100}
_SEEDS = {"train": 0, "validation": 1, "test": 2}
LOWEST, HIGHEST = 48, 84  # MIDI pitches
NOISE_STD = 0.002
PEAK_RANGE = (0.5, 0.8)
MAX_HARMONIC_HZ = 7_200.0
CHORDS = ((0, 4, 7), (0, 3, 7), (0, 7), (0, 4), (0, 12))  # major, minor, fifth, major third, octave


@dataclasses.dataclass(frozen=True)
class Instrument:
  """A timbre: harmonic amplitudes (of harmonics 1, 2, ...), an ADSR envelope (seconds; sustain a level),
  a vibrato (relative depth, Hz) and how fast harmonic k dies away (exp(-harmonic_decay * k * t))."""

  harmonics: tuple[float, ...]
  attack: float
  decay: float
  sustain: float
  release: float
  vibrato_depth: float = 0.0
  vibrato_rate: float = 5.0
  harmonic_decay: float = 0.0


INSTRUMENTS = {
    "flute": Instrument((1.0, 0.35, 0.12, 0.05, 0.02), 0.06, 0.1, 0.8, 0.12, 0.004, 5.0),
    "clarinet": Instrument((1.0, 0.04, 0.55, 0.03, 0.32, 0.02, 0.16, 0.01, 0.08), 0.03, 0.05, 0.9, 0.08,
                           0.0015, 5.5),
    "strings": Instrument(tuple(1.0 / k for k in range(1, 11)), 0.12, 0.15, 0.85, 0.2, 0.005, 6.0),
    "plucked": Instrument(tuple(k**-1.5 for k in range(1, 11)), 0.005, 1.2, 0.0, 0.15, harmonic_decay=0.6),
}
NAMES = tuple(INSTRUMENTS)


@dataclasses.dataclass(frozen=True)
class Event:
  """Notes (MIDI pitches) struck together at `onset` seconds and released after `duration` seconds."""

  onset: float
  duration: float
  pitches: tuple[int, ...]
  velocity: float = 1.0


def midi_to_hz(pitch: float) -> float:
  """Equal temperament with A4 (MIDI 69) at 440 Hz."""
  return 440.0 * 2.0 ** ((pitch - 69) / 12)


def _envelope(t: np.ndarray, duration: float, inst: Instrument) -> np.ndarray:
  """ADSR: linear attack to 1, linear decay to the sustain level, then after `duration` a linear release."""
  held = np.interp(t, [0.0, inst.attack, inst.attack + inst.decay], [0.0, 1.0, inst.sustain])
  at_release = np.interp(duration, [0.0, inst.attack, inst.attack + inst.decay], [0.0, 1.0, inst.sustain])
  released = at_release * np.clip(1.0 - (t - duration) / inst.release, 0.0, 1.0)
  return np.where(t < duration, held, released)


def _note(pitch: int, duration: float, inst: Instrument, length: int, sample_rate: int) -> np.ndarray:
  """One note of `length` samples from its onset (its release included, cut at `length`)."""
  t = np.arange(length) / sample_rate
  f0 = midi_to_hz(pitch)
  # Vibrato fades in over the 0.2 s after the attack.
  fade = np.clip((t - inst.attack) / 0.2, 0.0, 1.0)
  freq = f0 * (1.0 + inst.vibrato_depth * fade * np.sin(2 * np.pi * inst.vibrato_rate * t))
  theta = 2 * np.pi * np.cumsum(freq) / sample_rate
  # sin(k theta) for k = 1, 2, ... by the Chebyshev recurrence sin(k x) = 2 cos(x) sin((k-1) x) - sin((k-2) x).
  two_cos, prev, cur = 2 * np.cos(theta), np.zeros(length), np.sin(theta)
  out = np.zeros(length)
  for k, weight in enumerate(inst.harmonics, start=1):
    if k * f0 * (1 + inst.vibrato_depth) > MAX_HARMONIC_HZ:
      break
    out += (weight * np.exp(-inst.harmonic_decay * k * t) if inst.harmonic_decay else weight) * cur
    prev, cur = cur, two_cos * cur - prev
  return out * _envelope(t, duration, inst)


def render(events: list[Event], instrument: str, length: int = CLIP_SAMPLES,
           sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """The events played by `instrument`, float64 [length], unnormalised and noiseless."""
  inst = INSTRUMENTS[instrument]
  audio = np.zeros(length)
  for event in events:
    start = int(round(event.onset * sample_rate))
    if start >= length:
      continue
    n = min(length - start, int(np.ceil((event.duration + inst.release) * sample_rate)))
    gain = event.velocity / np.sqrt(len(event.pitches))
    for pitch in event.pitches:
      audio[start:start + n] += gain * _note(pitch, event.duration, inst, n, sample_rate)
  return audio


def sample_events(rng: np.random.Generator) -> list[Event]:
  """1-4 events filling the clip one after the other, each a single note (60%) or a chord."""
  count = int(rng.integers(1, 5))
  start, end = rng.uniform(0.0, 0.05), rng.uniform(0.85, 0.95)
  slots = rng.dirichlet(np.full(count, 2.0)) * (end - start)  # random lengths, summing to the span
  onsets = start + np.concatenate([[0.0], np.cumsum(slots)[:-1]])
  events = []
  for onset, slot in zip(onsets, slots):
    shape = (0,) if rng.random() < 0.6 else CHORDS[rng.integers(len(CHORDS))]
    root = int(rng.integers(LOWEST, HIGHEST - max(shape) + 1))
    events.append(Event(float(onset), float(slot * rng.uniform(0.7, 1.0)), tuple(root + i for i in shape),
                        float(rng.uniform(0.5, 1.0))))
  return events


def sample_clip(rng: np.random.Generator) -> tuple[np.ndarray, int, list[Event]]:
  """A random clip: float32 audio [CLIP_SAMPLES] in [-1, 1], its instrument's label and its events."""
  label = int(rng.integers(len(NAMES)))
  events = sample_events(rng)
  audio = render(events, NAMES[label])
  audio *= rng.uniform(*PEAK_RANGE) / np.abs(audio).max()
  audio += NOISE_STD * rng.standard_normal(audio.shape)
  return np.clip(audio, -1.0, 1.0).astype(np.float32), label, events


def clip(split: str, index: int) -> tuple[np.ndarray, int, list[Event]]:
  """Clip `index` of `split`, from its own fixed seed."""
  return sample_clip(np.random.default_rng([_SEEDS[split], index]))


def to_pcm(audio: np.ndarray) -> np.ndarray:
  """Float audio in [-1, 1] -> 16-bit PCM."""
  return np.round(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)


class Tones(tfds.core.GeneratorBasedBuilder):
  """One-second 16 kHz clips of synthetic notes and chords, labelled by instrument preset."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Four instrument presets, 1-4 notes or chords per clip, 1,000/100/100 clips."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "audio": tfds.features.Audio(shape=(CLIP_SAMPLES,), dtype=np.int16, sample_rate=SAMPLE_RATE),
            "label": tfds.features.ClassLabel(names=list(NAMES)),
        }),
        supervised_keys=("audio", "label"),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split, n) for split, n in SPLITS.items()}

  def _generate_examples(self, split: str, n: int):
    for i in range(n):
      audio, label, _ = clip(split, i)
      yield i, {"audio": to_pcm(audio), "label": label}
