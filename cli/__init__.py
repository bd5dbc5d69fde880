"""nanxi-tune's command line: one module per command family, each owning its parser (the TUI is nanxi_tune.tui)."""
