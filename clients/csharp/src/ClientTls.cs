using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using Grpc.Core;

namespace VisionRpc.Client;

/// <summary>TLS files and API keys of <see cref="VisionRpcClientOptions"/> applied to a channel's handler.</summary>
internal static class ClientTls
{
    public static void Configure(SocketsHttpHandler handler, VisionRpcClientOptions options)
    {
        if ((options.ClientCertificateFile is null) != (options.ClientKeyFile is null))
            throw new ArgumentException("a client certificate needs both ClientCertificateFile and ClientKeyFile");
        if (options.ClientCertificateFile is { } certFile && options.ClientKeyFile is { } keyFile)
        {
            var pair = X509Certificate2.CreateFromPemFile(certFile, keyFile);
            handler.SslOptions.ClientCertificates = new X509CertificateCollection { pair };
        }
        if (options.CaCertificateFile is { } caFile)
        {
            var ca = X509Certificate2.CreateFromPemFile(caFile);
            handler.SslOptions.RemoteCertificateValidationCallback = (_, certificate, _, errors) =>
            {
                if (certificate is null || (errors & SslPolicyErrors.RemoteCertificateNameMismatch) != 0)
                    return false;
                using var chain = new X509Chain();
                chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
                chain.ChainPolicy.CustomTrustStore.Add(ca);
                chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
                return chain.Build(new X509Certificate2(certificate));
            };
        }
    }

    public static CallCredentials ApiKeyCredentials(string apiKey)
    {
        var key = apiKey.Trim();
        if (key.Length == 0)
            throw new ArgumentException("expected a non-empty ApiKey");
        return CallCredentials.FromInterceptor((_, metadata) =>
        {
            metadata.Add("authorization", $"Bearer {key}");
            return Task.CompletedTask;
        });
    }
}
