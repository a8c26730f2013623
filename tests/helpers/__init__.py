"""What the tests and benches share: Triton inputs, Prometheus scraping, meshes of real processes.

Ports, readiness and process trees come from `services.launcher.processes`, which the launcher
uses too; these modules only add what a test needs on top.
"""
