"""The notes' diagnostic rules: the rule table, findings and the history they read (rulebook); the rules on the
training curves, the configuration and instability (curve_rules, config_rules, stability_rules) and on the error
breakdown (error_rules), all registered by importing ``rules``; the watcher that runs them over a run, pins (the
checkpoint a remedy rewinds to, kept) and the projection of the run's time against its budget."""
