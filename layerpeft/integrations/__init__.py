"""Bridges to other tools (lm-evaluation-harness); each imports its tool only when used."""
