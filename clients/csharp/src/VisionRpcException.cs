using Google.Rpc;
using Grpc.Core;

namespace VisionRpc.Client;

/// <summary>One field of the request that the server rejected (google.rpc.BadRequest).</summary>
public sealed record FieldViolation(string Field, string Description);

/// <summary>
/// Every error the client raises: the gRPC status code and message plus the rich details the server sends
/// (google.rpc.ErrorInfo reason/domain/metadata, BadRequest field violations, RetryInfo delay).
/// </summary>
public sealed class VisionRpcException : Exception
{
    public StatusCode Code { get; }
    public string Reason { get; }
    public string Domain { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }
    public IReadOnlyList<FieldViolation> FieldViolations { get; }
    public TimeSpan? RetryAfter { get; }

    /// <summary>UNAVAILABLE is the only status that is safe to retry blindly.</summary>
    public bool Retryable => Code == StatusCode.Unavailable;

    private VisionRpcException(RpcException inner, ErrorInfo? info, BadRequest? badRequest, RetryInfo? retry)
        : this(inner.StatusCode, inner.Status.Detail, inner, info, badRequest, retry)
    {
    }

    private VisionRpcException(
        StatusCode code, string message, Exception? inner, ErrorInfo? info, BadRequest? badRequest, RetryInfo? retry)
        : base($"{code}: {message}", inner)
    {
        Code = code;
        Reason = info?.Reason ?? "";
        Domain = info?.Domain ?? "";
        Metadata = info is null ? new Dictionary<string, string>() : new Dictionary<string, string>(info.Metadata);
        FieldViolations = badRequest?.FieldViolations.Select(v => new FieldViolation(v.Field, v.Description)).ToList()
            ?? new List<FieldViolation>();
        RetryAfter = retry?.RetryDelay?.ToTimeSpan();
    }

    /// <summary>Decodes the grpc-status-details-bin trailer of a failed call.</summary>
    public static VisionRpcException From(RpcException error)
    {
        var status = error.GetRpcStatus();
        return new VisionRpcException(
            error,
            status?.GetDetail<ErrorInfo>(),
            status?.GetDetail<BadRequest>(),
            status?.GetDetail<RetryInfo>());
    }

    /// <summary>
    /// Decodes a google.rpc.Status carried inside a message (an InferStream frame's error) like a failed call's.
    /// </summary>
    public static VisionRpcException FromStatus(Google.Rpc.Status status) =>
        new(
            (StatusCode)status.Code,
            status.Message,
            null,
            status.GetDetail<ErrorInfo>(),
            status.GetDetail<BadRequest>(),
            status.GetDetail<RetryInfo>());
}
