"""The REST API's JSON parser: DRF's, with a body nested too deeply for Python's parser
(RecursionError, which DRF lets through as a 500) refused as a parse error (400)."""
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class StrictJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError("JSON parse error - nested too deeply") from exc
