"""Datasets by name and the data module that splits, standardizes and loads them."""
