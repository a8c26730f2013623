"""KServe V1 and OIP V2 REST routes."""
