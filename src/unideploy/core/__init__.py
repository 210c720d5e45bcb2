"""unideploy.core: see docs/architecture.md."""
