"""unideploy.tools: see docs/architecture.md."""
