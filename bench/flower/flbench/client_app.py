"""ClientApp of the Flower SuperLink baseline: the site's .npz file comes from the
SuperNode's node_config["data-path"]; training and evaluation are flbench.task's."""
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flbench import task

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    site = task.Site(str(context.node_config["data-path"]))
    server_round = int(msg.content["config"].get("server-round", 0))
    state, num_examples, metrics = site.train(msg.content["arrays"].to_torch_state_dict(), server_round)
    content = RecordDict({"arrays": ArrayRecord(state),
                          "metrics": MetricRecord({**metrics, "num-examples": num_examples})})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    site = task.Site(str(context.node_config["data-path"]))
    loss, num_examples, metrics = site.evaluate(msg.content["arrays"].to_torch_state_dict())
    content = RecordDict({"metrics": MetricRecord({"loss": loss, **metrics, "num-examples": num_examples})})
    return Message(content=content, reply_to=msg)
