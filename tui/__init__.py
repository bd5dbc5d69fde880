"""nanxi-tune's Textual app: the app, its tabs, widgets, dialogs and workflow screens (no argument parsing)."""
