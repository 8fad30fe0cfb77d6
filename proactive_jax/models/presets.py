"""Named model shapes for runs without a Hugging Face directory (``model.preset``): tiny models for CPU runs."""

from __future__ import annotations

MODEL_PRESETS: dict[str, dict] = {
    # a tiny Qwen3 for CPU runs on the synthetic tasks (vocab covers the synthetic tokenizer's 119 ids)
    "tiny": dict(model_type="qwen3", vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                 qk_norm=True, qkv_bias=False, max_position_embeddings=512, eos_token_id=3, pad_token_id=1),
    # the same for the study tasks (data.synthetic.study_vocabulary(): 4,215 words; 4224 = 66 x 64)
    "tiny-study": dict(model_type="qwen3", vocab_size=4224, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                       tie_word_embeddings=True, qk_norm=True, qkv_bias=False, max_position_embeddings=512,
                       eos_token_id=3, pad_token_id=1),
    # the speech demo's tiny Qwen2-Audio (a HF-style qwen2_audio dict): a 4 s encoder window of 40 mel bins, ids of
    # the demo's word vocabulary (demo_speech.SPECIALS + the tone-words; <|AUDIO|> = 2, <|im_end|> = 1)
    "tiny-audio": {"model_type": "qwen2_audio", "audio_token_index": 2,
                   "audio_config": dict(num_mel_bins=40, d_model=48, encoder_layers=2, encoder_attention_heads=4,
                                        encoder_ffn_dim=96, max_source_positions=200),
                   "text_config": dict(model_type="qwen2", vocab_size=24, hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                       qkv_bias=True, qk_norm=False, tie_word_embeddings=True,
                                       max_position_embeddings=512, eos_token_id=1)},
}
