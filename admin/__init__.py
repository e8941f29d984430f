"""backupmx.admin: the admin's ``backupmx`` command and its subcommands."""
