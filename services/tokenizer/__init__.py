"""The tokenizer service: chat templates, tokenization, detokenization and encoder
pre/post-processing over OIP v2 gRPC (KServe's "transformer"). Never imports torch."""
