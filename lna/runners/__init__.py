"""Force-decoding runners: transformers (hf) and vLLM."""
