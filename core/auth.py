"""API token authentication for users (automation) and the services that issue tokens."""
from rest_framework import authentication, exceptions

from core.models import ApiToken
from core.tokens import issue_token, secret_matches, split_token


def api_token_create(*, user, name: str = "default") -> str:
    """Issue a token for `user`; returns the token string, which is never stored."""
    issued = issue_token("u")
    ApiToken.objects.create(user=user, name=name, key_id=issued.key_id, secret_hash=issued.secret_hash)
    return issued.token


def api_token_user(token: str):
    parts = split_token(token)
    if parts is None:
        return None
    row = ApiToken.objects.select_related("user").filter(key_id=parts[0]).first()
    if row is None or not secret_matches(parts[1], row.secret_hash) or not row.user.is_active:
        return None
    return row.user


class ApiTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Token"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode(errors="replace")
        scheme, _, token = header.partition(" ")
        if scheme != self.keyword:
            return None
        user = api_token_user(token)
        if user is None:
            raise exceptions.AuthenticationFailed("Invalid API token.")
        return (user, None)

    def authenticate_header(self, request):
        return self.keyword

