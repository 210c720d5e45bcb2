"""unideploy.apps: see docs/architecture.md."""
