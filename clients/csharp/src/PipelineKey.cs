using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Grpc.Core;
using VisionRpc.V1;

namespace VisionRpc.Client;

/// <summary>
/// The stream affinity key: a deterministic hash of what decides a server-side pipeline (sources, model,
/// inference and stream options), sent as the <c>x-visionrpc-pipeline-key</c> header of StreamPredictions. A
/// proxy hashing on it (nginx <c>hash $http_x_visionrpc_pipeline_key consistent</c>, an Istio DestinationRule's
/// consistentHash) sends identical subscriptions to one replica, where they share one pipeline
/// (docs/deploying.md). Every SDK builds the same text and hash: clients/python/_pipeline_key.py describes it,
/// tests/mesh/pipeline_key_cases.json checks it.
/// </summary>
public static class PipelineKey
{
    public const string Header = "x-visionrpc-pipeline-key";

    /// <summary>The request's key, or null for a join by stream id (the server ignores the rest of it).</summary>
    public static string? Of(StreamPredictionsRequest request)
    {
        if (request.StreamId.Length > 0)
            return null;
        var hash = SHA256.HashData(Encoding.UTF8.GetBytes(CanonicalText(request)));
        return Convert.ToHexString(hash).ToLowerInvariant()[..32];
    }

    /// <summary>The call's headers carrying the key, or null when the request has none.</summary>
    internal static Metadata? Headers(StreamPredictionsRequest request) =>
        Of(request) is { } key ? new Metadata { { Header, key } } : null;

    /// <summary>The text the key hashes; public for the cross-language cases.</summary>
    public static string CanonicalText(StreamPredictionsRequest request)
    {
        var options = request.Options ?? new InferOptions();
        var stream = request.StreamOptions ?? new StreamOptions();
        var names = options.ClassNames.Distinct().ToList();
        names.Sort(CompareUtf8);
        var frameImage = stream.FrameImage == FrameImage.Unspecified ? FrameImage.None : stream.FrameImage;
        var lines = new List<string> { "visionrpc-pipeline-key/v1", "model=" + LengthPrefixed(request.ModelId) };
        lines.AddRange(request.Sources.Select(source => "source=" + SourceText(source)));
        lines.Add("confidence=" + (options.HasConfidenceThreshold ? FloatText(options.ConfidenceThreshold) : ""));
        lines.Add("iou=" + (options.HasIouThreshold ? FloatText(options.IouThreshold) : ""));
        lines.Add("max_detections=" + (options.HasMaxDetections ? Number(options.MaxDetections) : ""));
        lines.Add("top_k=" + (options.HasTopK ? Number(options.TopK) : ""));
        lines.Add("class_ids=" + string.Join(",", options.ClassIds.Distinct().Order().Select(Number)));
        lines.Add("class_names=" + string.Join(",", names.Select(LengthPrefixed)));
        lines.Add("max_fps=" + (stream.HasMaxFps && stream.MaxFps != 0 ? FloatText(stream.MaxFps) : ""));
        lines.Add("frame_policy=" + Number((uint)(int)stream.FramePolicy));
        lines.Add("frame_image=" + Number((uint)(int)frameImage));
        lines.Add("jpeg_quality=" + (stream.JpegQuality == 0 ? "" : Number(stream.JpegQuality)));
        return string.Join("\n", lines) + "\n";
    }

    private static string SourceText(VideoSource source) => source.SourceCase switch
    {
        VideoSource.SourceOneofCase.Path => "path:" + LengthPrefixed(source.Path),
        VideoSource.SourceOneofCase.Url => "url:" + LengthPrefixed(source.Url),
        VideoSource.SourceOneofCase.Device => "device:" + Number(source.Device),
        _ => "none:",
    };

    private static string LengthPrefixed(string text) => Number((uint)Encoding.UTF8.GetByteCount(text)) + ":" + text;

    private static string Number(uint value) => value.ToString(CultureInfo.InvariantCulture);

    /// <summary>The float32's IEEE-754 bits in hex (float32 is what travels).</summary>
    private static string FloatText(float value) => BitConverter.SingleToUInt32Bits(value).ToString("x8", CultureInfo.InvariantCulture);

    /// <summary>Ordinal order of the UTF-8 bytes, as the other SDKs sort (not .NET's UTF-16 ordinal order).</summary>
    private static int CompareUtf8(string a, string b) =>
        ((ReadOnlySpan<byte>)Encoding.UTF8.GetBytes(a)).SequenceCompareTo(Encoding.UTF8.GetBytes(b));
}
