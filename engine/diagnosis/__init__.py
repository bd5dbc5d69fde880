"""The notes' diagnostic rules: the rule table, findings and the history they read (rulebook), the loss and
data rules (rules), the rules that read the error breakdown (error_rules), the watcher that runs them over a
run, pins (a finding waved off) and the val-plateau projection."""
