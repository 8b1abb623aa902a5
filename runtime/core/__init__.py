"""Shared basics of every layer: errors, atomic files, console, model metadata, images,
preprocessing, CPU facts."""
