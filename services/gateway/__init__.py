"""The HTTP front door: OpenAI and KServe V1/V2 REST over the gRPC mesh (no torch)."""
