"""Pulumi components of the ems program: one ComponentResource per module (see docs/deploy.md)."""
