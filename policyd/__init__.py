"""backupmx.policyd: the Postfix policy service of backupmx, and the pieces both daemons share
(configuration, listen addresses, the Postfix tools wrapper)."""
