"""Speech: the public audio API (Qwen2-Audio features, encoder, streaming examples).

- :func:`log_mel` / :func:`log_mel_windows`: Whisper log-mel features (equal to ``WhisperFeatureExtractor``),
  clamp modes ``utterance`` and ``running``; longer audio as 30 s windows, never truncated.
- :func:`encode`: projected audio embeddings under an encoder mask (``bidirectional`` | ``causal`` |
  ``block:K``) and a conv edge (``zero`` | ``lookahead``); :func:`encode_chunk`: the same, chunk by chunk.
- :func:`forward_audio`: Qwen2-Audio logits, as ``Qwen2AudioForConditionalGeneration``.
- :class:`AudioModelConfig` / :class:`EncoderConfig`; :func:`read_audio` (offline decoding: any format soundfile reads, mixed to mono,
  resampled to 16 kHz by :func:`resample`).

Implementations live in :mod:`proactive_jax.data.audio` (features), :mod:`proactive_jax.models.audio`
(the encoder's functions; its modules in :mod:`proactive_jax.models.audio_encoder`) and
:mod:`proactive_jax.models.audio_config` (configs).
"""
from proactive_jax.data.audio import (AudioError, check_waveform, feature_mask, log_mel, log_mel_windows, read_audio,
                                     resample, write_wav)
from proactive_jax.models.audio import (EncoderState, encode, encode_chunk, forward_audio, init_encoder_state, init_params,
                           output_lengths)
from proactive_jax.models.audio_config import AudioModelConfig, EncoderConfig, chunk_tokens_from_ms

__all__ = ["AudioError", "AudioModelConfig", "EncoderConfig", "EncoderState", "check_waveform", "chunk_tokens_from_ms",
           "encode", "encode_chunk", "feature_mask", "forward_audio", "init_encoder_state", "init_params", "log_mel",
           "log_mel_windows", "output_lengths", "read_audio", "resample", "write_wav"]
