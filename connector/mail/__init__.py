"""MSSanté e-mail: the subject convention and the composition of one MIME message per recipient."""
