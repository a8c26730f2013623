"""The transformers engine: every task of a Hugging Face model over OIP v2 gRPC
(`python -m services.engine_hf`)."""
