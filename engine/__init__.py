"""nanxi-tune's engine: config, data, model, loss, trainer. Never imports textual."""
