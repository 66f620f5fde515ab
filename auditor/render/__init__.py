"""Pure renderers of findings: table (terminal), JSON (machines) and Markdown (humans, PRs)."""
