"""backupmx's admin command (``backupmx``): status, flush, check and their rules."""
