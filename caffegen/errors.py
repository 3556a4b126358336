"""The user-error exception family: messages that name the file, the place and the fix."""


class CaffegenError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""

    exit_code = 2

    def __init__(self, message, path=None, line=None, column=None):
        super().__init__(message)
        self.message = message
        self.path = path
        self.line = line
        self.column = column

    def __str__(self):
        where = ""
        if self.path is not None:
            where = str(self.path)
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            where += ": "
        return where + self.message


class CaffeNotFound(CaffegenError):
    """No usable Caffe binary was found."""
