"""The vLLM engine service: an OIP v2 gRPC server around vLLM's AsyncLLM."""
