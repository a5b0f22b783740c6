from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from nodes.models import Node
from nodes.selectors import node_list


class NodeSerializer(serializers.ModelSerializer):
    class Meta:
        model = Node
        fields = ["id", "name", "status", "enabled", "last_heartbeat_at", "version", "datasets", "resources"]


class NodeListApi(APIView):
    def get(self, request):
        return Response(NodeSerializer(node_list(), many=True).data)
