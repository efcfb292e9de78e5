"""The backend's request/response contract, as the official vLLM backend's: the inputs and outputs
it declares, how a request's tensors and parameters become the engine's options and sampling
parameters, and how the engine's outputs and errors go back as Triton responses.
Copied beside model.py into the server's backend folder.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

BOOL_INPUTS = ["stream", "exclude_input_in_output", "return_finish_reason", "return_cumulative_logprob",
               "return_logprobs", "return_num_input_tokens", "return_num_output_tokens"]
OUTPUTS = [("text_output", "TYPE_STRING", [-1]), ("finish_reason", "TYPE_STRING", [-1]),
           ("cumulative_logprob", "TYPE_FP32", [-1]), ("logprobs", "TYPE_STRING", [-1]),
           ("num_input_tokens", "TYPE_UINT32", [1]), ("num_output_tokens", "TYPE_UINT32", [-1])]
# The official backend's messages, word for word: clients match on them.
STREAM_PROMPT_ERROR = "When streaming, `exclude_input_in_output` = False is not allowed."
UNHEALTHY_ERROR = "Model is unavailable due to unhealthy vLLM engine"


class RequestError(Exception):
    """A request the backend refuses; its text goes to the client as is."""


def complete_config(auto_complete_model_config):
    """Add the inputs and outputs a config leaves out; decoupled, no batching."""
    config = auto_complete_model_config.as_dict()
    have_inputs = {i["name"] for i in config.get("input", [])}
    have_outputs = {o["name"] for o in config.get("output", [])}
    inputs = [{"name": "text_input", "data_type": "TYPE_STRING", "dims": [1]}]
    inputs += [{"name": n, "data_type": "TYPE_BOOL", "dims": [1], "optional": True} for n in BOOL_INPUTS]
    inputs.append({"name": "sampling_parameters", "data_type": "TYPE_STRING", "dims": [1], "optional": True})
    for inp in inputs:
        if inp["name"] not in have_inputs:
            auto_complete_model_config.add_input(inp)
    for name, dtype, dims in OUTPUTS:
        if name not in have_outputs:
            auto_complete_model_config.add_output({"name": name, "data_type": dtype, "dims": dims})
    auto_complete_model_config.set_max_batch_size(0)
    auto_complete_model_config.set_model_transaction_policy({"decoupled": True})
    return auto_complete_model_config


def triton_error(message, code_name=None):
    code = getattr(pb_utils.TritonError, code_name, None) if code_name else None
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


def read_sampling(request):
    """The sampling_parameters input when given, else the request's parameters (gRPC
    `parameters=`, HTTP generate's extra keys): the official backend reads one or the other."""
    tensor = pb_utils.get_input_tensor_by_name(request, "sampling_parameters")
    if tensor is not None:
        raw = tensor.as_numpy().reshape(-1)[0]
        raw = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    else:
        raw = request.parameters() or "{}"
    sampling = json.loads(raw) if raw.strip() else {}
    if not isinstance(sampling, dict):
        raise ValueError("sampling parameters must be a JSON object")
    return sampling


def check_lora(lora_name, enable_lora, lora_names):
    if lora_name is None:
        return
    if not enable_lora:
        raise RequestError("LoRA feature is not enabled.")
    if lora_name not in lora_names:
        raise RequestError(f"LoRA {lora_name} is not supported, we currently support {lora_names}")


def read_options(request):
    def flag(name):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        return None if tensor is None else bool(tensor.as_numpy().reshape(-1)[0])

    options = {name: bool(flag(name)) for name in BOOL_INPUTS}
    exclude = flag("exclude_input_in_output")
    # The prompt is prepended to non-streamed output unless excluded; a streamed request
    # that asks for it explicitly is refused.
    options["prepend_input"] = (not options["stream"]) if exclude is None else not exclude
    if options["prepend_input"] and options["stream"]:
        raise ValueError(STREAM_PROMPT_ERROR)
    return options


def read_prompt(request):
    tensor = pb_utils.get_input_tensor_by_name(request, "text_input")
    if tensor is None:  # the official backend fails here with "'NoneType' object has no attribute"
        raise ValueError("the request has no text_input (a BYTES tensor of shape [1])")
    prompt = tensor.as_numpy().reshape(-1)[0]
    return prompt.decode("utf-8") if isinstance(prompt, bytes) else str(prompt)


def error_response(message):
    text = pb_utils.Tensor("text_output", np.array([message.encode("utf-8")], dtype=np.object_))
    return pb_utils.InferenceResponse(output_tensors=[text], error=triton_error(message))


def respond_error(sender, message):
    sender.send(error_response(message), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


def refuse(requests, message):
    """Fail each request with `message` as UNAVAILABLE (the model is down or unhealthy)."""
    for request in requests:
        request.get_response_sender().send(
            pb_utils.InferenceResponse(error=triton_error(message, "UNAVAILABLE")),
            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


def build_response(msg, options, prefix):
    """One engine message (its outputs so far) as a response with the outputs the request asked for."""
    outs = msg["outputs"]

    def strings(values):
        return np.array([v.encode("utf-8") for v in values], dtype=np.object_)

    tensors = [pb_utils.Tensor("text_output", strings([prefix + o["text"] for o in outs]))]
    if options["return_finish_reason"]:
        tensors.append(pb_utils.Tensor("finish_reason", strings([str(o["finish_reason"]) for o in outs])))
    if options["return_cumulative_logprob"]:
        # vLLM keeps no cumulative logprob without `logprobs`: NaN then, as the official backend.
        values = [np.nan if o["cumulative_logprob"] is None else o["cumulative_logprob"] for o in outs]
        tensors.append(pb_utils.Tensor("cumulative_logprob", np.array(values, dtype=np.float32)))
    if options["return_logprobs"]:
        tensors.append(pb_utils.Tensor("logprobs", strings([json.dumps(o["logprobs"]) for o in outs])))
    if options["return_num_input_tokens"]:
        tensors.append(pb_utils.Tensor("num_input_tokens", np.array([msg["prompt_tokens"]], dtype=np.uint32)))
    if options["return_num_output_tokens"]:
        tensors.append(pb_utils.Tensor("num_output_tokens", np.array([o["n"] for o in outs], dtype=np.uint32)))
    return pb_utils.InferenceResponse(output_tensors=tensors)
