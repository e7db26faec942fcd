"""Adapters: one package per channel kind. They translate a partner's dialect into hub commands
(inbound) and hub events into a partner's dialect (outbound). They never decide on the master
record; the core never knows a dialect."""
