"""Reusable presets (model sizes, meshes, data budgets, optimizers) that experiments compose."""
