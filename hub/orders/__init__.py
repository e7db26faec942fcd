"""The therapy order: the master record and the commands that move it through its journey."""
