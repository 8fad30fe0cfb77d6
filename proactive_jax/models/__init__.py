"""Models: the Qwen decoders and their Hugging Face I/O (config.json, safetensors)."""
