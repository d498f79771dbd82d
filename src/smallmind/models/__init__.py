"""Model families: one file each, config, weights and forward in one place."""
