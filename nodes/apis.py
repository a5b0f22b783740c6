"""The user-facing REST API for nodes (session or token auth): every signed-in user
lists them; staff create them and issue enrollment codes. Thin: parse, check
permission, call one service or selector, serialize."""
from rest_framework import permissions, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from nodes.models import Node
from nodes.selectors import enrollment_code_pending, node_get, nodes_usable_by
from nodes.services import enrollment_code_issue, enrollment_command, node_create


class NodeSerializer(serializers.ModelSerializer):
    class Meta:
        model = Node
        fields = ["id", "name", "status", "enabled", "last_heartbeat_at", "version", "datasets", "resources"]


class NodeCreateSerializer(serializers.Serializer):
    """Shape only; nodes.services.node_create validates the values."""

    name = serializers.CharField(max_length=200)
    agent_url = serializers.CharField(max_length=1000)
    groups = serializers.ListField(child=serializers.CharField(max_length=150), required=False, default=list,
                                   max_length=100, help_text="groups whose members may use the node")


def enrollment_answer(request, *, node: Node, code: str) -> Response:
    """201 with the node, its one-time code (shown this once), the code's expiry and the
    command to run at the site; not to be cached."""
    pending = enrollment_code_pending(node=node)
    response = Response({
        "node": NodeSerializer(node).data,
        "enrollment_code": code,
        "expires_at": serializers.DateTimeField().to_representation(pending.expires_at),
        "command": enrollment_command(portal_url=request.build_absolute_uri("/"), code=code),
    }, status=status.HTTP_201_CREATED)
    response["Cache-Control"] = "no-store"
    return response


class NodeListApi(APIView):
    def get_permissions(self):
        if self.request.method == "POST":
            return [permissions.IsAdminUser()]
        return super().get_permissions()

    def get(self, request):
        return Response(NodeSerializer(nodes_usable_by(request.user), many=True).data)

    def post(self, request):
        data = NodeCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        node, code = node_create(name=data.validated_data["name"], agent_url=data.validated_data["agent_url"],
                                 groups=data.validated_data["groups"], created_by=request.user)
        return enrollment_answer(request, node=node, code=code)


class NodeEnrollmentCodeApi(APIView):
    """A new one-time code for the node (its earlier unused codes stop working)."""

    permission_classes = [permissions.IsAdminUser]

    def post(self, request, name: str):
        node = node_get(name=name)
        return enrollment_answer(request, node=node, code=enrollment_code_issue(node=node, created_by=request.user))
